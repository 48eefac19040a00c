"""One appliance VM for a soak campaign, booted the way `invoke verify` boots it (a copy-on-write
overlay, the answers as the systemd credential, the same Target), and the checks run after a cut:
the tests/vm checks themselves (pytest in this process, as verify runs them) plus the leftovers a
cut could leave. On failure the serial log and the overlay disk are kept, and the path is said."""
from __future__ import annotations

import datetime
import json
import shutil
import threading
import time
from pathlib import Path

import yaml

from image.config import PROJECT_ROOT
from image.errors import StepFailed
from image.vm.qemu import VM, free_port
from image.vm.verify import (
    CHALLENGE_IP,
    CREDENTIAL_NAME,
    PAGE_PORT,
    Target,
    TargetPlugin,
    ca_port_of,
    ensure_admin_key,
    load_answers,
    read_junit,
)

SOAK_DIR = PROJECT_ROOT / "build" / "soak"
VM_TESTS = PROJECT_ROOT / "tests" / "vm"
# The tests/vm checks a cut must not break: step-ca up, the first boot done exactly once (completion
# marker present, no replace journal), the owners and modes of the CA's files, one root (status ==
# served), and certbot getting a certificate that chains to it.
CUT_CHECKS = (
    "test_appliance.py::test_step_ca_is_active_and_enabled",
    "test_appliance.py::test_first_boot_ran_once_and_is_done",
    "test_appliance.py::test_secrets_are_private_to_step",
    "test_appliance.py::test_the_secrets_directory_is_closed",
    "test_appliance.py::test_password_file_is_readable_by_step_only",
    "test_from_host.py::test_the_served_root_matches_the_fingerprint_status_prints",
    "test_from_host.py::test_certbot_gets_a_certificate_over_http01_that_chains_to_the_root",
)
# Staged and set-aside trees and files (ca_appliance/staging.py: .NAME.new-*, .NAME.old-*, .NAME.new)
# and an unfinished swap's journal: none may survive a boot after a cut.
STRAY_COMMAND = ("find /etc /var/lib /var/backups -xdev -maxdepth 4 \\( -name '.*.new-*' -o -name '.*.old-*' "
                 "-o -name '.*.new' \\) -print 2>/dev/null; "
                 "ls /etc/ca-appliance/replace-journal.json 2>/dev/null; true")

JOURNALS = {"journal.txt": "journalctl -b --no-pager", "step-ca.log": "journalctl -b -u step-ca --no-pager",
            "failed-units.txt": "systemctl --failed --no-pager"}


def new_target(image: Path, workdir: Path, cfg, accel: str, say=print, *, answers: dict | None = None,
               credential: bool = True, seed: Path | None = None, ca_port: int | None = None,
               challenge_port: int | None = None, cpus: int | None = None) -> Target:
    """A Target for a fresh overlay of `image` (not started): verify's default answers (or `answers`) as
    the systemd credential (unless credential=False), a read-only `seed` volume if given, and the CA and
    challenge host ports fixed when given (an upgrade's restored appliance must answer where the old one
    did: certbot keeps its account per server URL). `cpus`: the VM's vCPUs (default: the image's)."""
    key_file = ensure_admin_key(SOAK_DIR)
    # a campaign that was killed leaves its VMs' directories: a new one must not boot that old overlay
    # (the first boot half done) or read that old console (a cut moment met at once)
    shutil.rmtree(workdir, ignore_errors=True)
    if answers is None:
        answers = load_answers(None, key_file.with_suffix(".pub").read_text().strip())
    challenge_port = challenge_port or free_port()
    vm = VM(image, workdir, cpus=cpus or cfg.image.cpus, memory_mb=cfg.image.memory_mb, accel=accel,
            ports={"ssh": 22, "ca": ca_port_of(answers), **({"page": PAGE_PORT} if cfg.page.enabled else {})},
            guestfwds={(CHALLENGE_IP, 80): f"socat - TCP:127.0.0.1:{challenge_port}"},
            credentials={CREDENTIAL_NAME: yaml.safe_dump(answers).encode()} if credential else {},
            keep=True, say=say)
    if ca_port is not None:
        for name, port in list(vm.ports.items()):
            if name != "ca" and port == ca_port:
                vm.ports[name] = free_port(taken=[*vm.ports.values(), ca_port])
        vm.ports["ca"] = ca_port
        vm.spec.hostfwds = {vm.ports[n]: p for n, p in vm.guest_ports.items()}
    if seed is not None:
        vm.spec.seed_volumes = (seed,)
    workdir.mkdir(parents=True, exist_ok=True)
    return Target(vm=vm, user=cfg.admin.user, key_file=key_file, answers=answers, mode="unattended",
                  workdir=workdir, challenge_port=challenge_port)


def run(target: Target, command: str, timeout: float = 600):
    """A command as root in the guest: (exit status, stdout, stderr)."""
    result = target.host().run(command)
    return result.rc, result.stdout, result.stderr


def status(target: Target) -> dict:
    rc, out, err = run(target, "ca-appliance status --json")
    try:
        return json.loads(out)
    except ValueError:
        raise StepFailed("ca-appliance status --json", f"exit {rc}: {(err or out).strip()[:300]}") from None


def root_fingerprint(target: Target) -> str:
    return str(status(target).get("root_fingerprint", "")).replace(":", "").lower()


def served_root_fingerprint(target: Target) -> str:
    """SHA-256 of the root step-ca serves on /roots.pem, read from the host: no guest Python to start (a
    few seconds of an emulated CPU that the VM beside it needs). The tests/vm check compares it with
    what `status` prints."""
    from image.bench.jwk_client import fetch_root
    from image.bench.jwk_client import root_fingerprint as fingerprint_of
    try:
        return fingerprint_of(fetch_root(f"https://127.0.0.1:{target.vm.ports['ca']}", timeout=30))
    except (OSError, ValueError) as e:
        raise StepFailed("read the served root", f"{type(e).__name__}: {e}") from None


def strays(target: Target) -> list[str]:
    _, out, _ = run(target, STRAY_COMMAND)
    return [line for line in out.splitlines() if line.strip()]


# pytest runs in this process and is not thread-safe (its session, plugins, the hooks it sets): the VMs
# of a campaign boot side by side, their checks take turns. No output capture: it would swallow what
# the other VMs' threads print meanwhile.
_CHECKS_LOCK = threading.Lock()


def vm_checks(target: Target, junit: Path, checks=CUT_CHECKS) -> list[str]:
    """Run the named tests/vm checks against the target; the failures, one line each ([] = all passed)."""
    import pytest
    junit.unlink(missing_ok=True)
    target.forget_connection()
    with _CHECKS_LOCK:
        pytest.main([*(str(VM_TESTS / c) for c in checks), f"--junitxml={junit}", "-q", "--capture=no",
                     "-p", "no:cacheprovider", "-p", "no:warnings", "-o", "junit_family=xunit1",
                     f"--rootdir={PROJECT_ROOT}"],
                    plugins=[TargetPlugin(target)])
    target.forget_connection()
    if not junit.exists():
        return ["the tests/vm checks did not run (no JUnit file)"]
    results = read_junit(junit)
    failed = [f"{r.name}: {' '.join(r.message.split())[:200]}" for r in results if r.outcome in ("failed", "error")]
    return failed or ([] if results else ["no tests/vm check ran"])


def check_after_cut(target: Target, junit: Path, expect_root: str | None = None) -> tuple[str, list[str]]:
    """(the root fingerprint, the problems) of a booted appliance after a cut."""
    problems = []
    if not target.answers_ca(deadline=time.monotonic() + target.ready_timeout):
        problems.append("step-ca's /health does not answer")
    fingerprint = served_root_fingerprint(target)
    if expect_root and fingerprint != expect_root:
        problems.append(f"the root changed: {fingerprint} (was {expect_root})")
    left = strays(target)
    if left:
        problems.append("leftovers after the cut: " + ", ".join(left))
    target.forget_connection()
    problems += vm_checks(target, junit)
    return fingerprint, problems


def keep_for_inspection(target: Target, label: str, say=print) -> Path:
    """Stop the VM and move its serial log and overlay disk to build/soak/failures/LABEL-<time>/
    (with the journal and step-ca's log first, when the guest still answers over SSH)."""
    out = SOAK_DIR / "failures" / f"{label}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    if target.vm.is_running() and target.ssh_reached:
        for name, command in JOURNALS.items():
            try:
                (out / name).write_text(run(target, command)[1])
            except Exception as e:  # noqa: BLE001 - keep what we have; say why the rest is missing
                (out / name).write_text(f"could not fetch: {e}\n")
    target.forget_connection()
    target.vm.kill()
    for src in (target.vm.serial_log, target.vm.qemu_log, target.vm.spec.disk):
        if src.exists():
            shutil.move(str(src), out / src.name)
    shutil.rmtree(target.vm.workdir, ignore_errors=True)
    say(f"  kept for inspection: {out} (serial.log, overlay.qcow2 backed by {target.vm.image})")
    return out


def discard(target: Target) -> None:
    target.forget_connection()
    target.vm.kill()
    shutil.rmtree(target.vm.workdir, ignore_errors=True)
