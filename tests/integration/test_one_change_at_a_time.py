"""One command changes the CA at a time (guest lock.py).

Found by the soak's review: a `backup` (or `restore`, `setup`, `recover`) started while
`renew-intermediate` was between its swap and its commit ran recover(), which took the renewal's
journal for a power cut's and put the old intermediate back; the renewal then reported a new
intermediate that was no longer there. Here the renewal is really stopped mid-swap (SIGSTOP at the
staging checkpoint), the other commands run for real against the same prefix, then it continues.
"""
import os
import signal
import subprocess
import time
from pathlib import Path

from ca_helpers import CA_APPLIANCE, GUEST_PYTHON, as_appliance, run_cli
from cryptography import x509

MID_SWAP = "swap step-ca (new in place)"
PASSPHRASE = "a-backup-passphrase-for-the-lock-test"


def stopped_mid_change(ca, point=MID_SWAP):
    """renew-intermediate, started for real and stopped (SIGSTOP) at `point`; the Popen."""
    env = as_appliance(dict(os.environ, CA_APPLIANCE_TEST_STOP_AT=point))
    process = subprocess.Popen([GUEST_PYTHON, str(CA_APPLIANCE), "renew-intermediate", "--prefix", str(ca.prefix),
                                "--no-system"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return process
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.kill()
    raise AssertionError("renew-intermediate never reached its swap")


def finish(process):
    process.send_signal(signal.SIGCONT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, out + err
    return out


def test_commands_that_change_the_ca_are_refused_while_a_renewal_is_mid_swap_and_the_renewal_stands(
        make_ca, serve, tmp_path):
    ca = make_ca()
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(PASSPHRASE + "\n")
    earlier = tmp_path / "earlier.tar.gz"
    run_cli("backup", "--out", earlier, "--prefix", ca.prefix, "--no-system", "--passphrase-file", passphrase)
    old_intermediate = ca.intermediate.read_bytes()

    renewal = stopped_mid_change(ca)
    try:
        holder = f"renew-intermediate, pid {renewal.pid}"
        archive = tmp_path / "during.tar.gz"
        attempts = {
            "backup": ["backup", "--out", archive, "--no-system", "--passphrase-file", passphrase],
            "restore": ["restore", earlier, "--no-system", "--passphrase-file", passphrase],
            "recover": ["recover"],
            "setup": ["setup", "--force", "--no-system", "--answers", tmp_path / "absent.yaml"],
            "publish-page": ["publish-page"],
        }
        for command, argv in attempts.items():
            refused = run_cli(*argv, "--prefix", ca.prefix, check=False)
            assert refused.returncode == 2, (command, refused.stdout, refused.stderr)
            assert refused.stderr.strip().splitlines() == [
                f"ca-appliance: {command}: another ca-appliance command is changing the CA ({holder}); "
                "run this one when it has finished"], command
            assert PASSPHRASE not in refused.stderr + refused.stdout
        assert not archive.exists()

        watched = run_cli("watch", "--no-system", "--prefix", ca.prefix)
        assert watched.stdout.strip() == (f"ca-appliance watch: skipped: another command is changing the CA "
                                          f"({holder}); the next run checks it")
        # reading is not changing: the status and a restore drill still answer
        assert run_cli("status", "--json", "--prefix", ca.prefix, check=False).returncode in (0, 1, 2)
        drill = run_cli("backup", "--verify", earlier, "--passphrase-file", passphrase, "--prefix", ca.prefix)
        assert "Restore drill passed" in drill.stdout
    finally:
        if renewal.poll() is None:
            renewal.send_signal(signal.SIGCONT)
    reported = finish(renewal)

    # what the renewal reported is what is on disk: the new intermediate, nothing undone, nothing staged
    serial = format(x509.load_pem_x509_certificate(ca.intermediate.read_bytes()).serial_number, "x")
    assert f"New intermediate in place: serial {serial}," in reported
    assert ca.intermediate.read_bytes() != old_intermediate
    assert not (ca.prefix / "etc/ca-appliance/replace-journal.json").exists()
    assert not [p for p in ca.prefix.rglob(".*") if ".new-" in p.name or ".old-" in p.name]
    assert not (ca.prefix / "run").exists(), "the lock leaves nothing behind"
    serve(ca)   # and step-ca serves the renewed CA

    after = tmp_path / "after.tar.gz"   # the lock is free again
    run_cli("backup", "--out", after, "--prefix", ca.prefix, "--no-system", "--passphrase-file", passphrase)
    assert "Restore drill passed" in run_cli("backup", "--verify", after, "--passphrase-file", passphrase).stdout


def test_a_command_killed_while_holding_the_lock_does_not_block_the_next(make_ca):
    """A power cut clears /run; a SIGKILL under --prefix leaves the file, but the kernel dropped the lock."""
    ca = make_ca()
    env = dict(os.environ, CA_APPLIANCE_TEST_KILL_AT=MID_SWAP)
    cut = run_cli("renew-intermediate", "--prefix", ca.prefix, "--no-system", check=False, env=env)
    assert cut.returncode == -signal.SIGKILL
    left = ca.prefix / "run/ca-appliance/lock"
    assert left.read_text().startswith("renew-intermediate, pid ")   # the dead holder's file is there
    result = run_cli("recover", "--prefix", ca.prefix)
    assert "was undone" in result.stdout
    assert not (ca.prefix / "run/ca-appliance").exists()   # the taker removed the dead holder's file
