"""The boot matrix's helpers and fixtures (a module of its own: `conftest` is not importable by
name when several test directories are collected together; conftest.py re-exports the fixtures).

The boot matrix: the Debian test image booted for real on each import target's virtual hardware.

The first boot (PKI creation, minutes under TCG) happens ONCE per session, as the libvirt import
the README describes (tests/boot/test_libvirt.py checks it); when libvirt cannot run here, plainly
under QEMU on the same q35/virtio hardware. Every other row boots a copy-on-write overlay of that
first-booted disk (about a minute each) and must reach the same CA. Each row's boot time is
printed in the session summary ("boot matrix").
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from image_fixture import PROJECT_ROOT

from image import markers
from image.vm.qemu import HARDWARE, VM, resolve_accel
from image.vm.verify import CREDENTIAL_NAME, default_answers, ensure_admin_key

# libvirt's QEMU runs as libvirt-qemu: everything it opens must be below world-traversable
# directories (pytest's tmp dirs are 0700), so the boot tests work under build/.
WORK = PROJECT_ROOT / "build" / "boot-tests"
FIRST_BOOT_TIMEOUT = float(os.environ.get("CA_BOOT_FIRST_TIMEOUT", 1200))
LATER_BOOT_TIMEOUT = float(os.environ.get("CA_BOOT_LATER_TIMEOUT", 900))
MEMORY_MB = 1536
README = PROJECT_ROOT / "docs" / "importing.md"   # the libvirt recipe the tests run word for word
BANNER = markers.BANNER
WIZARD_OFFER = markers.wizard_offer("ttyS0")

BOOT_TIMES: list[tuple[str, str, float]] = []   # (row, what, seconds): printed at the end


def record_boot(row: str, what: str, seconds: float) -> None:
    BOOT_TIMES.append((row, what, seconds))
    print(f"boot matrix: {row}: {what} in {seconds:.0f} s")


def pytest_terminal_summary(terminalreporter):
    if BOOT_TIMES:
        terminalreporter.section("boot matrix (TCG)")
        for row, what, seconds in BOOT_TIMES:
            terminalreporter.write_line(f"{row:<34} {seconds:6.0f} s  {what}")


def fingerprint_of(text: str) -> str:
    return text.replace(":", "").lower()


def banner_in(log: Path) -> re.Match | None:
    try:
        text = log.read_text(errors="replace").replace("\r", "")
    except OSError:
        return None
    return BANNER.search(text)


def acme_ready(port: int) -> str | None:
    """The root fingerprint once the ACME directory answers on the forwarded port, else None."""
    from image.bench.jwk_client import fetch_root, root_fingerprint
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    base = f"https://127.0.0.1:{port}"
    try:
        with urllib.request.urlopen(f"{base}/acme/acme/directory", context=context, timeout=10) as response:
            if b"newNonce" not in response.read():
                return None
        return root_fingerprint(fetch_root(base, timeout=10))
    except OSError:
        return None


def wait_until(what: str, probe, timeout: float, alive=lambda: None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive()
        found = probe()
        if found:
            return found
        time.sleep(3)
    tail = ""
    if log is not None and log.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
    pytest.fail(f"{what}: not within {timeout:.0f} s; serial console, last lines:\n{tail}")


# ---- libvirt, started by the tests themselves (no systemd as PID 1 here)


def virsh(*args, check=True, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "--connect", "qemu:///system", *args], capture_output=True, text=True,
                          check=check, timeout=timeout)


@dataclass
class Libvirt:
    workdir: Path

    def readme_command(self, *, name: str, disk: Path, serial_log: Path, answers: Path | None) -> str:
        """The documented virt-install line (and, with answers, the documented seed ISO: made by
        its genisoimage line, attached by its --disk option), changed only where CI differs from a
        user's host: our disk, user-mode networking (no bridge or dnsmasq here), TCG, no console
        attached, and the serial console logged to a file."""
        line = readme_import_line()
        line = line.replace("--name ca ", f"--name {name} ", 1)
        line = re.sub(r"--disk \S+", f"--disk {disk}", line, count=1)
        line = line.replace("--network default", "--network user", 1)
        line = re.sub(r"--console (\S+)", rf"--console \1,log.file={serial_log}", line, count=1)
        if answers is not None:
            seed_dir = self.workdir / f"seed-{name}"
            seed_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(answers, seed_dir / "ca-appliance.yaml")
            make_iso, attach = readme_seed_lines()
            self.install(f"cd {shlex.quote(str(seed_dir))} && {make_iso}")
            line += " " + attach.replace("ca-seed.iso", str(seed_dir / "ca-seed.iso"))
        return line + " --virt-type qemu --noautoconsole"

    def install(self, command: str) -> None:
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300,
                                cwd=self.workdir)
        assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"

    def stop(self, name: str, timeout: float = 180) -> None:
        """A clean ACPI shutdown (the disk is reused), forced off after `timeout`; then undefined."""
        virsh("shutdown", name, check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and virsh("domstate", name, check=False).stdout.strip() == "running":
            time.sleep(3)
        self.remove(name)

    def remove(self, name: str) -> None:
        virsh("destroy", name, check=False)
        virsh("undefine", name, "--nvram", check=False)


def readme_import_line() -> str:
    match = re.search(r"`(virt-install --import [^`]+)`", README.read_text())
    assert match, "README: no `virt-install --import ...` line in the importing section"
    return match.group(1)


def readme_seed_lines() -> tuple[str, str]:
    """The documented seed ISO for unattended libvirt imports: (the genisoimage line, the --disk option)."""
    text = README.read_text()
    make_iso = re.search(r"`(genisoimage [^`]*-volid CASEED[^`]*)`", text)
    attach = re.search(r"`(--disk ca-seed\.iso[^`]*)`", text)
    assert make_iso and attach, "docs/importing.md: no `genisoimage ... CASEED ...` and `--disk ca-seed.iso...` lines"
    return make_iso.group(1), attach.group(1)


def libvirt_missing() -> str | None:
    for tool in ("libvirtd", "virtlogd", "virsh", "virt-install"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install libvirt-daemon-system virtinst)"
    return None


@pytest.fixture(scope="session")
def libvirt():
    """libvirtd and virtlogd for the session, started here and stopped after (also on failure);
    an already running libvirtd is used and left alone."""
    missing = libvirt_missing()
    if missing:
        pytest.skip(missing)
    WORK.mkdir(parents=True, exist_ok=True)
    started = []
    if virsh("version", check=False).returncode != 0:
        for daemon in ("virtlogd", "libvirtd"):
            pidfile = WORK / f"{daemon}.pid"
            pidfile.unlink(missing_ok=True)
            subprocess.run([daemon, "-d", "--pid-file", str(pidfile)], check=True, timeout=60)
            started.append(pidfile)
        deadline = time.monotonic() + 60
        while virsh("version", check=False).returncode != 0:
            if time.monotonic() > deadline:
                pytest.fail("libvirtd started but does not answer on qemu:///system")
            time.sleep(1)
    try:
        yield Libvirt(WORK)
    finally:
        for pidfile in reversed(started):
            try:
                pid = int(pidfile.read_text().strip())
                os.kill(pid, 15)
                for _ in range(100):
                    os.kill(pid, 0)
                    time.sleep(0.1)
            except (OSError, ValueError):
                pass


# ---- the first boot, shared


@dataclass
class FirstBoot:
    disk: Path              # the first-booted disk (a qcow2 overlay of the test image), never written again
    fingerprint: str        # the root fingerprint the appliance showed
    acme_url: str           # the ACME directory URL its console banner shows ('' when not read from it)
    how: str                # 'libvirt' | 'qemu'
    seconds: float
    serial_log: Path


def boot_answers(work: Path) -> tuple[dict, Path]:
    key = ensure_admin_key(work / "keys")
    answers = default_answers(key.with_suffix(".pub").read_text().strip(), "boot-matrix-ca-password")
    answers["ca"]["dns_names"][0] = answers["hostname"] = "ca.boot.test"
    path = work / "answers.yaml"
    path.write_text(yaml.safe_dump(answers))
    return answers, path


def overlay(base: Path, path: Path) -> Path:
    path.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(path)],
                   check=True)
    path.chmod(0o644)
    return path


def first_boot_with_libvirt(lib: Libvirt, image: Path, answers: Path) -> FirstBoot:
    name = f"ca-boot-test-{os.getpid()}"
    disk = overlay(image, WORK / "first-boot.qcow2")
    log = WORK / "first-boot-serial.log"
    log.unlink(missing_ok=True)
    start = time.monotonic()
    try:
        lib.install(lib.readme_command(name=name, disk=disk, serial_log=log, answers=answers))

        def running():
            if virsh("domstate", name, check=False).stdout.strip() != "running":
                pytest.fail(f"the libvirt domain {name} stopped during its first boot; serial log {log}")

        match = wait_until("libvirt import: the CA's console banner (setup done unattended)",
                           lambda: banner_in(log), FIRST_BOOT_TIMEOUT, running, log)
        seconds = time.monotonic() - start
    finally:
        lib.stop(name)
    return FirstBoot(disk, fingerprint_of(match.group(2)), match.group(1), "libvirt", seconds, log)


def first_boot_with_qemu(image: Path, answers: Path) -> FirstBoot:
    """The fallback when libvirt cannot run: the same hardware (q35, virtio) under plain QEMU."""
    work = WORK / "first-boot-qemu"
    shutil.rmtree(work, ignore_errors=True)
    vm = VM(image, work, cpus=2, memory_mb=MEMORY_MB, accel=resolve_accel("tcg").accel,
            ports={"ca": 443, "ssh": 22}, credentials={CREDENTIAL_NAME: answers.read_bytes()},
            hardware=HARDWARE["libvirt"], keep=True)
    start = time.monotonic()
    try:
        vm.start()
        fingerprint = wait_until("first boot under QEMU: the ACME directory", lambda: acme_ready(vm.ports["ca"]),
                                 FIRST_BOOT_TIMEOUT, lambda: vm.check_alive("first boot"), vm.serial_log)
        seconds = time.monotonic() - start
        client = vm.wait_for_ssh("admin", WORK / "keys" / "admin_ed25519", timeout=300)
        client.exec_command("sudo systemctl poweroff")
        try:
            vm.proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            pass
        client.close()
    finally:
        vm.kill()
    disk = WORK / "first-boot.qcow2"
    os.replace(vm.spec.disk, disk)
    log = WORK / "first-boot-serial.log"
    shutil.copyfile(vm.serial_log, log)
    shutil.rmtree(work, ignore_errors=True)
    match = banner_in(log)
    return FirstBoot(disk, fingerprint, match.group(1) if match else "", "qemu", seconds, log)


@pytest.fixture(scope="session")
def first_boot(debian_image, request) -> FirstBoot:
    """The test image's first boot with answers (PKI created), done once for the whole matrix."""
    WORK.mkdir(parents=True, exist_ok=True)
    _, answers = boot_answers(WORK)
    if libvirt_missing() is None:
        lib = request.getfixturevalue("libvirt")
        boot = first_boot_with_libvirt(lib, debian_image, answers)
    else:
        boot = first_boot_with_qemu(debian_image, answers)
    record_boot("libvirt q35 virtio-blk virtio-net", f"first boot via {boot.how}, PKI created, CA up",
                boot.seconds)
    return boot


@pytest.fixture(scope="session", autouse=True)
def boot_work_cleanup():
    yield
    shutil.rmtree(WORK, ignore_errors=True)
