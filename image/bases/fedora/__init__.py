"""Fedora Server base: Anaconda installs the appliance onto a raw disk, driven by our kickstart.

No root and no host package manager: the installer's kernel and initrd come from the mirror's
Server tree (images/pxeboot/, checked against the tree's .treeinfo checksums, cached), the
kickstart and the payload ride on an ISO labelled OEMDRV written in Python, and QEMU (KVM when
usable, else TCG) runs the installer until the kickstart powers the VM off. Progress comes from
the serial console; Anaconda's own log comes out through its virtio-serial log port, and our
report %post sends the release, the package list and a success marker through another one.

A file:// mirror (a local copy of the tree) is served to the installer over loopback HTTP,
since the VM cannot read host paths.
"""
from __future__ import annotations

import configparser
import contextlib
import functools
import http.client
import http.server
import re
import shlex
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from image import settings
from image.bases.fedora.iso import write_volume_iso
from image.bases.fedora.kickstart import (
    INSTALLER_CONSOLE,
    KICKSTART_NAME,
    OEMDRV_LABEL,
    PAYLOAD_NAME,
    PAYLOAD_UNITS,
    RESULT_PORT,
    SUCCESS_MARKER,
    artifact_volume_file,
    kickstart_repositories,
    mirror_layout,
    render_kickstart,
    tree_url,
)
from image.cache import cache_dir
from image.config import Config
from image.disk import protective_mbr_boot_flag
from image.download import USER_AGENT, download_verified
from image.errors import StepFailed, UserError
from image.files import sha256_file
from image.runner import Runner, stop_process, tail
from image.vm.qemu import machine_args, qemu_opt

REQUIRED_TOOLS = {"qemu-system-x86_64": ("qemu-system-x86", "qemu-system-x86"),
                  "qemu-img": ("qemu-utils", "qemu-img")}
NEEDS_ROOT = False
PROVISION_BASE = "fedora"   # the kickstart's %post runs `ca-appliance provision --base fedora`
PACKAGE_KIND = "rpm"   # step-ca and step as smallstep's x86_64 RPMs (image.artifacts.PACKAGE_FORMATS)
# the OVF's OperatingSystemSection: CIM_OperatingSystem id, vSphere guest id, description
OVA_GUEST_OS = (101, "fedora64Guest", "Fedora Linux (64-bit)")

# updates.security: dnf5-automatic (kickstart.UPDATE_PACKAGES) installs security updates daily;
# provision enables the timer, payload lays the file and the restart drop-in.
UPDATE_UNITS = ("dnf5-automatic.timer",)
UPDATE_SERVICE = "dnf5-automatic.service"
UPDATE_FILES = {
    "etc/dnf/automatic.conf": """# Written by the appliance build (updates.security): dnf5-automatic.timer downloads and
# installs security updates only, and never reboots (step-ca is restarted when needed).
[commands]
upgrade_type = security
download_updates = yes
apply_updates = yes
reboot = never

[emitters]
emit_via = stdio
""",
}


def check_host() -> None:
    """Nothing beyond REQUIRED_TOOLS: no root, no host package manager."""

BOOT_FILES = ("images/pxeboot/vmlinuz", "images/pxeboot/initrd.img")
ANACONDA_MIN_MEMORY_MB = 2048       # Anaconda's stage2 lives in RAM; less and it fails oddly
ANACONDA_LOG_PORT = "org.fedoraproject.anaconda.log.0"  # Anaconda forwards its logs here when present
QEMU_HOST_ADDRESS = "10.0.2.2"      # the host as QEMU's user-mode network shows it to the guest
# A whole Server install: minutes with KVM, hours under TCG emulation.
INSTALL_TIMEOUT_S = {"kvm": 90 * 60, "tcg": 8 * 3600}
FATAL_GRACE_S = 5                    # after a fatal console line, let the log port flush, then stop


# --- the installer's kernel and initrd, verified against the tree's .treeinfo


def parse_treeinfo(text: str, source: str = ".treeinfo") -> dict[str, tuple[str, str]]:
    """{path in the tree: (algorithm, hex digest)} from the [checksums] section
    ('images/pxeboot/vmlinuz = sha256:<hex>')."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # paths are case-sensitive
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        raise StepFailed("fetch installer", f"{source} is not a treeinfo file ({' '.join(str(e).split())})") from None
    if not parser.has_section("checksums"):
        raise StepFailed("fetch installer", f"{source} has no [checksums] section")
    sums = {}
    for path, value in parser.items("checksums"):
        algorithm, _, digest = value.strip().partition(":")
        sums[path] = (algorithm.lower(), digest.lower())
    return sums


UNREACHABLE_HINT = ("the fedora base installs from fedora.mirror over the network: point it at a reachable mirror "
                    "or a local copy (file:///path), or build with base debian")


def _fetch(url: str, target: Path, *, release: int, expected_sha256: str | None = None) -> str:
    """An installer file to target (image.download: whole and verified, or nothing); returns its sha256."""
    def missing(http_404: bool) -> UserError:
        return UserError(f"config error: fedora.release/fedora.mirror: {url} does not exist"
                         f"{' (HTTP 404)' if http_404 else ''}; the mirror must carry {mirror_layout(release)}")

    return download_verified(url, target, step="fetch installer", expected_sha256=expected_sha256,
                             digest_source="the tree's .treeinfo", missing=missing,
                             unreachable_hint=UNREACHABLE_HINT)


REPOSITORY_INDEX = "repodata/repomd.xml"
REPOSITORY_CHECK_TIMEOUT_S = 30


def check_repositories(mirror: str, release: int) -> None:
    """Every repository the kickstart uses has its index (repodata/repomd.xml), checked before the
    installer starts: Anaconda would otherwise stop at "Error setting up repositories" after minutes
    of booting. A missing one is a UserError naming it and what the mirror must carry."""
    for what, url in kickstart_repositories(mirror, release).items():
        index = url + REPOSITORY_INDEX
        request = urllib.request.Request(index, headers={"User-Agent": USER_AGENT, "Range": "bytes=0-0"})
        try:
            with urllib.request.urlopen(request, timeout=REPOSITORY_CHECK_TIMEOUT_S) as response:
                response.read(1)
            continue
        except urllib.error.HTTPError as e:
            if e.code not in (404, 410):
                raise StepFailed("check the mirror", f"{index}: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            if not isinstance(e.reason, FileNotFoundError):   # file:// mirrors: missing
                host = urlsplit(index).netloc or index
                raise StepFailed("check the mirror", f"cannot reach {host} ({e.reason}); {UNREACHABLE_HINT}") from None
        except (OSError, http.client.HTTPException) as e:
            raise StepFailed("check the mirror", f"{index}: {e}") from None
        raise UserError(f"config error: fedora.mirror: the {what} of Fedora {release} is missing ({index} does not "
                        f"exist); the kickstart installs from three repositories, so the mirror must carry "
                        f"{mirror_layout(release)}")



def fetch_boot_files(tree: str, release: int, *, say=print) -> tuple[Path, Path]:
    """The tree's pxeboot kernel and initrd, verified against its .treeinfo, cached per release."""
    tree = tree.rstrip("/") + "/"
    where = cache_dir() / "fedora" / str(release)
    treeinfo = where / "treeinfo"
    _fetch(tree + ".treeinfo", treeinfo, release=release)   # small, and the one thing that says what is current
    sums = parse_treeinfo(treeinfo.read_text(errors="replace"), tree + ".treeinfo")
    paths = []
    for rel in BOOT_FILES:
        if rel not in sums:
            raise StepFailed("fetch installer", f"{tree}.treeinfo lists no checksum for {rel}")
        algorithm, expected = sums[rel]
        if algorithm != "sha256":
            raise StepFailed("fetch installer", f"{tree}.treeinfo gives {rel} a {algorithm} checksum; "
                                                f"only sha256 is trusted")
        target = where / Path(rel).name
        if target.is_file() and sha256_file(target) == expected:
            say(f"    {rel}: cached, verified ({target})")
        else:
            say(f"    {rel}: downloading from {tree}")
            _fetch(tree + rel, target, release=release, expected_sha256=expected)
        paths.append(target)
    return paths[0], paths[1]


@contextlib.contextmanager
def guest_visible_mirror(mirror: str) -> Iterator[str]:
    """The mirror URL as the installer VM can use it: http(s) as is, file:// served over loopback
    HTTP (QEMU's user network shows the host's 127.0.0.1 as 10.0.2.2)."""
    if not mirror.startswith("file://"):
        yield mirror
        return
    root = urlsplit(mirror).path
    if not Path(root).is_dir():
        raise UserError(f"config error: fedora.mirror: {mirror!r} is not a directory")

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{QEMU_HOST_ADDRESS}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# --- the QEMU command line (a pure function: tests compare it whole)



def anaconda_kernel_args(tree: str) -> str:
    return " ".join([
        f"inst.stage2={tree}",                              # the runtime image; packages: the kickstart's url
        f"inst.ks=hd:LABEL={OEMDRV_LABEL}:/{KICKSTART_NAME}",  # explicit: a missing volume fails, not prompts
        "inst.text",
        f"console={INSTALLER_CONSOLE.removeprefix('/dev/')},115200n8",   # where the %post scripts write too
        "rd.emergency=reboot",                              # dracut failure ends QEMU (-no-reboot) at once
        # no installer logs or kickstarts in the image (/var/log/anaconda, /root/*ks.cfg): Anaconda copies
        # them after the last %post, where provision cannot reach; the builder has them from the log port
        "inst.nosave=all",
    ])


def anaconda_qemu_command(cfg: Config, *, kernel: Path, initrd: Path, iso: Path, disk: Path, serial_log: Path,
                          installer_log: Path, result_log: Path, accel: str, tree: str) -> list[str]:
    """QEMU running Anaconda from the tree's pxeboot kernel onto the raw disk, OEMDRV as a CD."""
    return [
        *machine_args("ca-appliance-anaconda", "q35", accel, cfg.image.cpus,
                      max(cfg.image.memory_mb, ANACONDA_MIN_MEMORY_MB)),
        "-serial", f"file:{serial_log}",
        "-no-reboot",
        "-kernel", str(kernel),
        "-initrd", str(initrd),
        "-append", anaconda_kernel_args(tree),
        "-drive", f"file={qemu_opt(disk)},format=raw,if=virtio,cache=unsafe",
        "-drive", f"file={qemu_opt(iso)},format=raw,media=cdrom,readonly=on",
        "-netdev", "user,id=net0",
        "-device", "virtio-net-pci,netdev=net0",
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-pci,rng=rng0",
        "-device", "virtio-serial-pci",
        "-chardev", f"file,id=anaconda-log,path={qemu_opt(installer_log)}",
        "-device", f"virtserialport,chardev=anaconda-log,name={ANACONDA_LOG_PORT}",
        "-chardev", f"file,id=install-result,path={qemu_opt(result_log)}",
        "-device", f"virtserialport,chardev=install-result,name={RESULT_PORT}",
    ]


# --- following the install on the serial console

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]")
_PACKAGE = re.compile(r"Installing (\S+) \((\d+)/(\d+)\)")
_DOWNLOAD = re.compile(r"Downloading (\d+) RPMs.*?\((\d+)%\) done")
# Anaconda's progress steps, as its text UI prints them.
STAGES = (
    "Starting automated install", "Setting up the installation environment", "Configuring storage",
    "Creating disklabel", "Running pre-installation scripts", "Running pre-installation tasks",
    "Starting package installation process", "Downloading packages",
    "Preparing transaction from installation source", "Configuring installed system",
    "Writing network configuration", "Creating users", "Configuring addons", "Generating initramfs",
    "Storing configuration files and kickstarts", "Running post-installation scripts",
    "Installation complete", "ca-appliance:",
)
# The console lines after which Anaconda never finishes on its own: it waits for a person (a dialog,
# the summary hub with an incomplete spoke) or has ended. Verbatim from Anaconda 45.21 (Fedora 45's,
# tag anaconda-45.21) and simpleline, its text UI library; each with what it means for the build. Each
# is the start of its message, short enough that the text UI's 80-column wrapping never splits it.
ANACONDA_STOPS = {
    # the summary hub, shown only when a kickstart left a mandatory spoke incomplete
    # (pyanaconda/core/constants.py PAYLOAD_STATUS_INVALID_SOURCE; ui/tui/spokes/*.py status)
    "Error setting up repositories": "a repository the kickstart uses could not be set up",
    "Installation source not set up": "the installation source could not be set up",
    "Error checking software selection": "a package or group the kickstart asks for is missing",
    "Error checking storage configuration": "the kickstart's storage layout cannot be made",
    "Kickstart insufficient": "the kickstart's storage layout has no root file system",
    "The following mandatory spokes are not completed": "the kickstart leaves a mandatory spoke incomplete",
    "Not enough space in file systems for the current software": "the disk is too small",
    # simpleline's prompts: the hub and every dialog wait for input here
    "Please make a selection from the above": "Anaconda waits at its summary hub",
    "Press ENTER to exit": "Anaconda shows an error dialog",
    "Please respond 'yes' or 'no'": "Anaconda asks a question",
    # pyanaconda/errors.py: the error handler's dialogs
    "There was an error running the kickstart script": "a %pre or %post with --erroronfail failed",
    "The following error occurred while setting up the payload": "the installation source failed",
    "The following error occurred while installing the payload": "a package failed to install",
    "An error occurred while activating your storage configuration": "the disk could not be set up",
    "There is a problem with your existing storage configuration": "the disk could not be set up",
    "The following error occurred while installing the boot loader": "the boot loader failed to install",
    "The following error occurred during the installation": "an installation step failed",
    # pyanaconda/exception.py: the unexpected-error handler ("occured" is Anaconda's spelling)
    "An unknown error has occured": "Anaconda hit an unexpected error",
    "An unknown error has occurred": "Anaconda hit an unexpected error",
    "The installation was stopped due to an error": "Anaconda stopped on an error",
    "The installation was stopped due to what seems to be a problem": "a disk I/O error",
    "Running in cmdline mode, no interactive debugging allowed": "Anaconda hit an unexpected error",
    "Traceback (most recent call last)": "Anaconda hit an unexpected error",
    # pykickstart, printed before Anaconda exits on a kickstart it cannot read
    "The following problem occurred on line": "Anaconda refused the kickstart",
    # the kernel and dracut (rd.emergency=reboot ends QEMU, but say why)
    "Kernel panic": "the installer's kernel panicked",
    "Entering emergency mode": "the installer's initramfs failed",
}
# Our %post scripts copy their output to the console with this prefix (kickstart/post-console.sh.j2);
# their lines are shown, never taken for Anaconda's own.
POST_PREFIX = "ca-appliance:"


class InstallProgress:
    """Turns serial console lines into a few progress lines: each stage once, package
    installs and downloads every tenth."""

    def __init__(self):
        self.seen_stages: set[str] = set()
        self.package_tenth = -1
        self.download_tenth = -1
        self.fatal: str | None = None          # the first console line that stopped Anaconda
        self.fatal_meaning: str | None = None
        self.last_post_line: str | None = None  # the last line our %post scripts printed

    @property
    def stop_reason(self) -> str | None:
        """One line: Anaconda's own words, what they mean, and what our %post said last."""
        if self.fatal is None:
            return None
        reason = f'Anaconda stopped: "{self.fatal}" ({self.fatal_meaning})'
        if self.last_post_line:
            reason += f'; the last %post line: "{self.last_post_line}"'
        return reason

    def feed(self, raw_line: str) -> str | None:
        line = _ANSI.sub("", raw_line).strip()
        if not line:
            return None
        if line.startswith(POST_PREFIX):
            self.last_post_line = line
            if line not in self.seen_stages:
                self.seen_stages.add(line)
                return line
            return None
        for marker, meaning in ANACONDA_STOPS.items():
            if marker in line:
                if self.fatal is None:   # quoted in one line: the hub's columns of spaces collapsed
                    self.fatal, self.fatal_meaning = " ".join(line.split()), meaning
                return f"installer: {line}"
        if m := _PACKAGE.search(line):
            done, total = int(m.group(2)), int(m.group(3))
            tenth = 10 * done // total if total else 0
            if tenth != self.package_tenth:
                self.package_tenth = tenth
                return f"installing packages: {done}/{total} ({m.group(1)})"
            return None
        if m := _DOWNLOAD.search(line):
            tenth = int(m.group(2)) // 10
            if tenth != self.download_tenth:
                self.download_tenth = tenth
                return f"downloading {m.group(1)} packages: {m.group(2)}%"
            return None
        for stage in STAGES:
            if line.startswith(stage) and line not in self.seen_stages:
                self.seen_stages.add(line)
                return line
        return None


def run_installer(cmd: list[str], *, serial_log: Path, installer_log: Path, timeout: float, runner: Runner,
                  poll_s: float = 2.0) -> None:
    """Run QEMU until it exits, reporting progress from the serial log; StepFailed (with the tail
    of the installer's log) on a fatal console line, a non-zero exit or the timeout. QEMU never
    outlives this call."""
    progress = InstallProgress()
    with open(runner.log_path, "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
    if runner.verbose:
        runner.say(f"    $ {shlex.join(cmd)}")
    serial_log.touch()
    deadline = time.monotonic() + timeout
    fatal_at = None
    pending = b""
    with open(runner.log_path, "ab") as qemu_out, open(serial_log, "rb") as serial:
        try:
            # long-lived: the serial console is followed while it runs (Runner.run would block); stop_process ends it
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=qemu_out, stderr=qemu_out)
        except FileNotFoundError:
            raise StepFailed(runner.step_name, f"{cmd[0]} is not installed", runner.log_path) from None
        try:
            while True:
                exited = proc.poll() is not None
                pending += serial.read()
                *lines, pending = re.split(rb"\r\n|\r|\n", pending)
                for line in lines:
                    message = progress.feed(line.decode(errors="replace"))
                    if message:
                        runner.say(f"    {message}")
                if exited:
                    break
                if progress.fatal and fatal_at is None:
                    fatal_at = time.monotonic()
                if fatal_at is not None and time.monotonic() - fatal_at > FATAL_GRACE_S:
                    raise _anaconda_stopped(runner, progress, serial_log, installer_log)
                if time.monotonic() > deadline:
                    raise _installer_failed(runner, f"the installer did not finish within {timeout:.0f}s",
                                            serial_log, installer_log)
                time.sleep(poll_s)
        finally:
            stop_process(proc, grace=10)
    if progress.fatal:
        raise _anaconda_stopped(runner, progress, serial_log, installer_log)
    if proc.returncode != 0:
        raise _installer_failed(runner, f"qemu exited with status {proc.returncode}", serial_log, installer_log)


def _anaconda_stopped(runner: Runner, progress: InstallProgress, serial_log: Path, installer_log: Path) -> StepFailed:
    """One line in Anaconda's own words; its log (or the console's, when it sent none) is the log path."""
    log = installer_log if installer_log.exists() and installer_log.stat().st_size else serial_log
    return StepFailed(runner.step_name, f"{progress.stop_reason}; serial console: {serial_log}", log)


def _installer_failed(runner: Runner, reason: str, serial_log: Path, installer_log: Path) -> StepFailed:
    log = installer_log if installer_log.exists() and installer_log.stat().st_size else serial_log
    last = tail(log, 25)
    detail = f"{reason}; serial console: {serial_log}"
    if last:
        detail += f"\n    last lines of {log}:\n" + "\n".join("    " + x for x in last.splitlines())
    return StepFailed(runner.step_name, detail, log)


def read_install_result(result_log: Path) -> tuple[str, list[str]] | None:
    """(release, ["name version", ...]) from the report %post, or None without its success marker."""
    try:
        lines = result_log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    if SUCCESS_MARKER not in lines:
        return None
    release, packages = "", []
    for line in lines[:lines.index(SUCCESS_MARKER)]:
        if line.startswith("release: "):
            release = line.removeprefix("release: ").strip()
        elif line.strip():
            packages.append(line.strip())
    return release, packages


def check_payload_units(payload: Path) -> None:
    """The units the kickstart enables must be in the payload: better now than after the install."""
    try:
        with tarfile.open(payload) as tar:
            names = set(tar.getnames())
    except (OSError, tarfile.TarError) as e:
        raise StepFailed("check payload", f"{payload} cannot be read ({e})") from None
    missing = [u for u in PAYLOAD_UNITS if f"etc/systemd/system/{u}" not in names
               and f"usr/lib/systemd/system/{u}" not in names]
    if missing:
        raise StepFailed("check payload", f"{payload} lacks {', '.join(missing)} (the overlay's units, which "
                                          f"the kickstart enables)")


# --- the base interface


def build_raw(cfg: Config, *, workdir: Path, runner: Runner, artifacts: list, payload: Path,
              use_cache: bool = True):
    """Install Fedora Server with Anaconda onto workdir/fedora-<release>.raw. Nothing of the base is
    cached between builds (Anaconda installs from the mirror each time), so use_cache changes nothing."""
    from image.bases import BaseResult
    from image.vm.accel import choose_accel

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    release = cfg.fedora.release
    check_payload_units(payload)
    volume_files = [artifact_volume_file(a) for a in artifacts]
    choice = choose_accel(settings.installer_accel())
    runner.say(f"    accelerator: {choice.accel} ({choice.reason})")

    with runner.step(f"fetch the Fedora {release} installer"):
        check_repositories(cfg.fedora.mirror, release)
        kernel, initrd = fetch_boot_files(tree_url(cfg.fedora.mirror, release), release,
                                          say=runner.say)

    with guest_visible_mirror(cfg.fedora.mirror) as mirror:
        tree = tree_url(mirror, release)
        with runner.step("write the OEMDRV volume"):
            kickstart = workdir / KICKSTART_NAME
            kickstart.write_text(render_kickstart(cfg, volume_files, mirror=mirror))
            files = {KICKSTART_NAME: kickstart, PAYLOAD_NAME: Path(payload)}
            files.update({f.name: f.source for f in volume_files})
            iso = write_volume_iso(workdir / "oemdrv.iso", files, OEMDRV_LABEL)

        disk = workdir / f"fedora-{release}.raw"
        disk.unlink(missing_ok=True)
        runner.run(["qemu-img", "create", "-f", "raw", disk, f"{cfg.image.disk_gb}G"])
        # The logs go next to the build log: the build removes workdir when a step fails.
        logs = runner.log_path.with_suffix("")
        serial_log, installer_log = Path(f"{logs}.anaconda-serial.log"), Path(f"{logs}.anaconda.log")
        result_log = workdir / "install-result.txt"
        for f in (serial_log, installer_log, result_log):
            f.unlink(missing_ok=True)
        timeout = settings.install_timeout(INSTALL_TIMEOUT_S[choice.accel])
        with runner.step(f"install Fedora Server {release} with Anaconda ({choice.accel}; "
                         f"serial log {serial_log})"):
            cmd = anaconda_qemu_command(cfg, kernel=kernel, initrd=initrd, iso=iso, disk=disk,
                                        serial_log=serial_log, installer_log=installer_log,
                                        result_log=result_log, accel=choice.accel, tree=tree)
            run_installer(cmd, serial_log=serial_log, installer_log=installer_log, timeout=timeout, runner=runner)
            result = read_install_result(result_log)
            if result is None:
                raise _installer_failed(runner, "the installer powered off without reporting success "
                                                f"({result_log} has no {SUCCESS_MARKER!r})",
                                        serial_log, installer_log)
    # the kickstart's %post clears it; a disk with the flag set would still pass every test under QEMU
    if protective_mbr_boot_flag(disk):
        raise StepFailed("check the protective MBR", f"{disk}: the protective MBR is marked bootable (pmbr_boot); "
                                                     f"some UEFI firmware refuses such a disk, and the kickstart's "
                                                     f"%post should have cleared it", installer_log)
    release_name, packages = result
    return BaseResult(raw=disk, release=release_name or f"Fedora Server {release}", packages=packages)
