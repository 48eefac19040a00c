"""`ca-appliance backup` and `restore`: the same CA comes back, root and issued-certificate records alike."""
import io
import os
import stat
import subprocess
import tarfile

import pytest
from ca_helpers import PASSWORD, run_cli
from test_ca_acme import NAME, certbot, certbot_certonly

BACKUP_PASSPHRASE = "backup-passphrase-for-tests"


def test_backup_then_restore_keeps_the_root_and_the_issued_certificates(make_ca, serve, tmp_path, port_80_free):
    ca = make_ca()
    server = serve(ca)
    issued = certbot_certonly(ca, tmp_path)
    assert issued.returncode == 0, issued.stdout + issued.stderr
    server.stop()  # the appliance's backup stops step-ca itself; here it is the test's process

    archive = tmp_path / "ca-backup.tar.gz"
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(BACKUP_PASSPHRASE + "\n")
    run_cli("backup", "--out", archive, "--prefix", ca.prefix, "--no-system", "--passphrase-file", passphrase)
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    sealed = archive.read_bytes()
    assert sealed.startswith(b"CA-APPLIANCE-BACKUP\n")  # format 2: no tar, no password.txt in the clear
    assert PASSWORD.encode() not in sealed and b"password.txt" not in sealed
    fingerprint_before = run_cli("status", "--prefix", ca.prefix).stdout

    ca.setup("--force")  # a different CA in its place: new root, empty database
    assert run_cli("status", "--prefix", ca.prefix).stdout != fingerprint_before

    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-backup-passphrase\n")
    for extra in ((), ("--passphrase-file", wrong)):
        refused = run_cli("restore", archive, "--prefix", ca.prefix, "--no-system", *extra, check=False)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "passphrase" in refused.stderr and BACKUP_PASSPHRASE not in refused.stderr
    assert run_cli("status", "--prefix", ca.prefix).stdout != fingerprint_before
    restored = run_cli("restore", archive, "--prefix", ca.prefix, "--no-system",
                       "--passphrase-file", passphrase).stdout
    status = run_cli("status", "--prefix", ca.prefix).stdout
    fingerprint = next(line for line in fingerprint_before.splitlines() if line.startswith("root fingerprint"))
    assert fingerprint in status
    assert fingerprint.split()[-1] in restored

    serve(ca)
    # ACME revocation looks the certificate up in step-ca's database: it only works if the record came back.
    revoked = certbot(ca, tmp_path, "revoke", "--cert-path", tmp_path / "config/live" / NAME / "cert.pem",
                      "--no-delete-after-revoke")
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr


def test_restore_refuses_an_archive_with_foreign_paths(make_ca, tmp_path):
    ca = make_ca()
    before = ca.root.read_bytes()
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        data = b"root::0:0::/root:/bin/sh\n"
        info = tarfile.TarInfo("etc/step-ca/../../etc/passwd")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    result = run_cli("restore", evil, "--prefix", ca.prefix, "--no-system", check=False)
    assert result.returncode == 2
    assert "unexpected member" in result.stderr
    assert ca.root.read_bytes() == before
    assert not (ca.prefix / "etc/passwd").exists()


def test_backup_without_a_ca_says_so(tmp_path):
    result = run_cli("backup", "--out", tmp_path / "b.tar.gz", "--prefix", tmp_path / "empty", "--no-system",
                     check=False)
    assert result.returncode == 2
    assert "no CA is configured" in result.stderr
    assert not (tmp_path / "b.tar.gz").exists()


def format1_archive(ca, path, extra=()):
    """A format 1 backup (a plain .tar.gz, as earlier versions wrote), plus `extra` (TarInfo, bytes) members."""
    import json
    with tarfile.open(path, "w:gz") as tar:
        manifest = json.dumps({"format": 1, "created": "2026-01-01T00:00:00+00:00", "prefix": str(ca.prefix),
                               "root_fingerprint": "0" * 64}).encode()  # a lie: restore must not repeat it
        info = tarfile.TarInfo("ca-appliance-backup.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        for top in ("etc/step-ca", "var/lib/step-ca"):
            tar.add(ca.prefix / top, arcname=top)
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data))


def test_restore_reads_format_1_and_normalises_modes(make_ca, tmp_path):
    ca = make_ca()
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    fingerprint = x509.load_pem_x509_certificate(ca.root.read_bytes()).fingerprint(hashes.SHA256()).hex()
    # as earlier versions wrote it: an X5C provisioner trusting the CA's own root (the ACME-to-any-name hole)
    import base64
    import json
    config = ca.config
    config["authority"]["provisioners"].append({"type": "X5C", "name": "x5c",
                                                "roots": base64.b64encode(ca.root.read_bytes()).decode()})
    ca.ca_json.write_text(json.dumps(config))
    evil = tarfile.TarInfo("etc/step-ca/config/helper")
    evil.mode, evil.size = 0o6777, 4
    loose = tarfile.TarInfo("etc/step-ca/secrets/extra_key")
    loose.mode, loose.size = 0o666, 4
    archive = tmp_path / "old.tar.gz"
    format1_archive(ca, archive, [(evil, b"#!/x"), (loose, b"key!")])
    ca.setup("--force")
    restored = run_cli("restore", archive, "--prefix", ca.prefix, "--no-system").stdout
    assert fingerprint in restored and "0" * 64 not in restored  # computed from the restored root
    assert stat.S_IMODE((ca.steppath / "config/helper").stat().st_mode) == 0o644  # no setuid, no write for others
    assert stat.S_IMODE((ca.steppath / "secrets/extra_key").stat().st_mode) == 0o600
    assert stat.S_IMODE((ca.steppath / "secrets").stat().st_mode) == 0o700
    assert stat.S_IMODE(ca.password_file.stat().st_mode) == 0o400
    assert "X5C" not in [p["type"] for p in ca.config["authority"]["provisioners"]]


def test_restore_drops_an_x5c_provisioner_trusting_the_cas_own_intermediate(make_ca, tmp_path):
    """Issue 21 item 7: trusting the intermediate lets any ACME or JWK leaf of this CA mint any name."""
    import base64
    import json
    ca = make_ca()
    config = ca.config
    config["authority"]["provisioners"].append({"type": "X5C", "name": "x5c",
                                                "roots": base64.b64encode(ca.intermediate.read_bytes()).decode()})
    ca.ca_json.write_text(json.dumps(config))
    archive = tmp_path / "old.tar.gz"
    format1_archive(ca, archive, [])
    ca.setup("--force")
    run_cli("restore", archive, "--prefix", ca.prefix, "--no-system")
    assert "X5C" not in [p["type"] for p in ca.config["authority"]["provisioners"]]


# ---- issue 21: owners and modes from the one table, duplicates, a plain archive given a passphrase ----

STEP_UID = 4242


def ca_with_a_step_account(tmp_path, name="owned"):
    """A CA whose tree has its own account database with user step (uid 4242): the guest gives each path
    its owner from there (layout.accounts), as it does from /etc/passwd on the appliance."""
    from ca_helpers import CA, answers_for, free_port
    prefix = tmp_path / name
    (prefix / "etc").mkdir(parents=True)
    (prefix / "etc/passwd").write_text(f"root:x:0:0::/root:/bin/sh\nstep:x:{STEP_UID}:{STEP_UID}::/:/bin/false\n")
    (prefix / "etc/group").write_text(f"root:x:0:\nstep:x:{STEP_UID}:\n")
    port = free_port()
    ca = CA(prefix, port, answers_for(port))
    ca.setup()
    return ca


def owners_and_modes(ca):
    """{path relative to the prefix: (uid, mode)} of the CA's trees and state file."""
    found = {}
    for top in ("etc/step-ca", "var/lib/step-ca", "etc/ca-appliance/state.json"):
        root = ca.prefix / top
        for path in [root, *(root.rglob("*") if root.is_dir() else [])]:
            info = path.lstat()
            found[str(path.relative_to(ca.prefix))] = (info.st_uid, stat.S_IMODE(info.st_mode))
    return found


def assert_the_tables_owners_and_modes(ca, after):
    """What step-ca may read is step's, the root key only root's; nothing writable by others; no set-id bits.
    Spelt out here, and compared with the guest's own table (layout.OWNERSHIP) too."""
    from ca_appliance.layout import ownership_of
    found = owners_and_modes(ca)
    expected = {
        "etc/step-ca": (STEP_UID, 0o755), "etc/step-ca/secrets": (STEP_UID, 0o700),
        "etc/step-ca/password.txt": (STEP_UID, 0o400), "etc/step-ca/config/ca.json": (STEP_UID, 0o644),
        "etc/step-ca/secrets/intermediate_ca_key": (STEP_UID, 0o600), "var/lib/step-ca": (STEP_UID, 0o750),
        "etc/ca-appliance/state.json": (0, 0o644),
    }
    if (ca.prefix / "etc/step-ca/secrets/root_ca_key").exists():
        expected["etc/step-ca/secrets/root_ca_key"] = (0, 0o600)   # step-ca never reads the root key
    for path, owner_mode in expected.items():
        assert found[path] == owner_mode, f"after {after}: {path} is {found[path]}, not {owner_mode}"
    for path, (uid, mode) in found.items():
        assert mode & 0o7002 == 0, f"after {after}: {path} mode {mode:o}"
        if path.startswith("etc/step-ca/secrets/"):
            assert mode & 0o077 == 0, f"after {after}: {path} mode {mode:o}"
        owner, table_mode = ownership_of(path, (ca.prefix / path).is_dir())
        assert (uid, mode) == ({"root": 0, "step": STEP_UID}[owner], table_mode), f"after {after}: {path}"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to uid 4242 needs root")
def test_every_command_that_writes_the_ca_leaves_the_tables_owners_and_modes(tmp_path):
    ca = ca_with_a_step_account(tmp_path)
    assert_the_tables_owners_and_modes(ca, "setup")

    passphrase = tmp_path / "passphrase"
    passphrase.write_text(BACKUP_PASSPHRASE + "\n")
    archive = tmp_path / "owned.bak"
    run_cli("backup", "--out", archive, "--prefix", ca.prefix, "--no-system", "--passphrase-file", passphrase)
    assert archive.stat().st_uid == 0 and stat.S_IMODE(archive.stat().st_mode) == 0o600
    (ca.prefix / "etc/step-ca/secrets/root_ca_key").chmod(0o644)   # a careless hand: restore puts it right
    run_cli("restore", archive, "--prefix", ca.prefix, "--no-system", "--passphrase-file", passphrase)
    assert_the_tables_owners_and_modes(ca, "restore")

    run_cli("renew-intermediate", "--prefix", ca.prefix, "--no-system")
    assert_the_tables_owners_and_modes(ca, "renew-intermediate")
    assert owners_and_modes(ca)["etc/step-ca/secrets/intermediate_ca_key.previous"] == (STEP_UID, 0o600)

    # the upgrade's restore (setup --restore), over this CA: the previous one is archived root's, 0600
    plain = tmp_path / "plain.tar.gz"
    format1_archive(ca, plain)
    run_cli("setup", "--restore", plain, "--force", "--prefix", ca.prefix, "--no-system")
    assert_the_tables_owners_and_modes(ca, "setup --restore")
    saved = list((ca.prefix / "var/backups/ca-appliance").iterdir())
    assert saved and all((p.stat().st_uid, stat.S_IMODE(p.stat().st_mode)) == (0, 0o600) for p in saved)


def test_restore_refuses_two_members_of_one_name_and_reports_nothing(make_ca, tmp_path):
    # The fingerprint was read from the first root_ca.crt, the extraction wrote the last: one root
    # reported, another installed. Spelt apart (./) they were two names until normalised.
    ca, other = make_ca(), make_ca()
    before = ca.root.read_bytes()
    foreign = tarfile.TarInfo("./etc/step-ca/certs/root_ca.crt")
    archive = tmp_path / "two-roots.tar.gz"
    foreign.size = len(other.root.read_bytes())
    format1_archive(ca, archive, [(foreign, other.root.read_bytes())])
    result = run_cli("restore", archive, "--prefix", ca.prefix, "--no-system", check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "two members named 'etc/step-ca/certs/root_ca.crt'" in result.stderr
    assert ca.root.read_bytes() == before


def test_a_passphrase_for_a_plain_archive_is_refused_unless_allow_unencrypted(make_ca, tmp_path):
    ca = make_ca()
    archive = tmp_path / "plain.tar.gz"
    format1_archive(ca, archive)
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(BACKUP_PASSPHRASE + "\n")
    ca.setup("--force")
    before = ca.root.read_bytes()
    refused = run_cli("restore", archive, "--prefix", ca.prefix, "--no-system", "--passphrase-file", passphrase,
                      check=False)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "--allow-unencrypted" in refused.stderr and BACKUP_PASSPHRASE not in refused.stderr
    assert ca.root.read_bytes() == before
    run_cli("restore", archive, "--prefix", ca.prefix, "--no-system", "--passphrase-file", passphrase,
            "--allow-unencrypted")
    assert ca.root.read_bytes() != before


@pytest.mark.parametrize("n, expected", [(3, "a power of two"), (2 ** 20, "scrypt n 1048576")])
def test_a_sealed_header_outside_the_writers_parameters_is_one_line_and_writes_nothing(tmp_path, n, expected):
    import base64
    import json
    header = {"format": 2, "kdf": "scrypt", "n": n, "r": 8, "p": 1, "cipher": "AES-256-GCM",
              "salt": base64.b64encode(b"s" * 16).decode(), "nonce": base64.b64encode(b"n" * 12).decode()}
    archive = tmp_path / "hostile.bak"
    archive.write_bytes(b"CA-APPLIANCE-BACKUP\n" + json.dumps(header).encode() + b"\n" + b"\0" * 64)
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(BACKUP_PASSPHRASE + "\n")
    prefix = tmp_path / "fresh"
    result = run_cli("restore", archive, "--prefix", prefix, "--no-system", "--passphrase-file", passphrase,
                     check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not prefix.exists() or not any(prefix.rglob("*")), sorted(prefix.rglob("*"))


def test_backup_onto_a_full_disk_is_refused_before_step_ca_is_stopped(make_ca, tmp_path):
    """A real small file system (tmpfs of 8 MiB): backup refuses in one line, exit 1, naming what is
    free and what it needs, before it would stop step-ca (soak's disk-full campaign found backup
    stopping step-ca first, which then could not start on the full disk); nothing is written there.
    On a file system with room the same backup succeeds."""
    ca = make_ca()
    small, roomy = tmp_path / "small", tmp_path / "roomy"
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(BACKUP_PASSPHRASE + "\n")
    mounted = []
    try:
        for where, size in ((small, "8m"), (roomy, "256m")):
            where.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)], check=True)
            mounted.append(where)
        result = run_cli("backup", "--out", small / "ca.tar.gz", "--prefix", ca.prefix, "--no-system",
                         "--passphrase-file", passphrase, check=False)
        assert result.returncode == 1, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert f"{small} has 8 MiB free; the archive needs up to" in line
        assert "MiB must stay free for step-ca" in line and "step-ca was not stopped" in line
        assert PASSWORD not in line
        assert os.listdir(small) == []
        run_cli("backup", "--out", roomy / "ca.tar.gz", "--prefix", ca.prefix, "--no-system",
                "--passphrase-file", passphrase)
        assert (roomy / "ca.tar.gz").stat().st_size > 0
    finally:
        for where in mounted:
            subprocess.run(["umount", str(where)], check=False)
