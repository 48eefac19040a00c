"""Booting an appliance image under QEMU for `invoke verify` (and anything else that needs a VM).

The user's image is never written: the VM boots a qcow2 overlay backed by it. Networking is
QEMU's user mode with host forwards on free loopback ports, so nothing needs root or a bridge.
The serial console is a unix socket (attach with pexpect to type into it) that QEMU also logs
to a file, whether or not anyone is attached. `VM` is a context manager that always kills QEMU
and removes its files on exit, unless `keep` asks to leave both for a person to look at.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from image.errors import StepFailed, UserError
from image.runner import checked_output, stop_process, tail

# systemd's PID 1 imports every file under this fw_cfg directory as a system credential
# (/run/credentials/@system/NAME), loading qemu_fw_cfg itself early when it runs under QEMU.
FW_CFG_CREDENTIALS = "opt/io.systemd.credentials"
# systemd's credential names: no '/', no ',' (QEMU's option separator) and no '=' either here
CREDENTIAL_NAME_RE = re.compile(r"[A-Za-z0-9_.@-]+")
FW_CFG_NAME_MAX = 55  # QEMU's fw_cfg file names: 56 bytes with the terminating NUL
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


def resolve_accel(requested: str):
    """The accelerator for 'auto'|'kvm'|'tcg' and why (an image.vm.accel.AccelChoice: .accel, .reason)."""
    from image.vm.accel import choose_accel  # lazily: only booting needs it
    return choose_accel(requested)


_HANDED_OUT: set[int] = set()
_PORT_LOCK = threading.Lock()


def free_port(host: str = "127.0.0.1", taken: Iterable[int] = ()) -> int:
    """A TCP port nobody listens on right now (the kernel picks it; `taken` ones are skipped), and one
    this process never handed out before: VMs started side by side (invoke soak) each keep their ports
    across a power cut, while QEMU is down and the port unbound, without another VM taking them."""
    taken = set(taken)
    with _PORT_LOCK:
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
            if port not in taken and port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port
    raise StepFailed("pick free ports", f"no free TCP port on {host}")


def fw_cfg_credential(name: str, path: str | os.PathLike) -> str:
    """The -fw_cfg argument handing the file at `path` to the guest as the systemd credential `name`.
    Only the file's name is on the command line: credentials never go on argv (every local user
    reads /proc/PID/cmdline) nor into the logged command line, whatever their size."""
    if not CREDENTIAL_NAME_RE.fullmatch(name) or name in (".", "..") or len(name) > FW_CFG_NAME_MAX - len(
            FW_CFG_CREDENTIALS) - 1:
        raise ValueError(f"credential name {name!r} is not a systemd credential name that fits fw_cfg "
                         f"(letters, digits, '.', '_', '-', '@'; at most {FW_CFG_NAME_MAX} characters with "
                         f"{FW_CFG_CREDENTIALS}/)")
    return f"name={FW_CFG_CREDENTIALS}/{name},file={qemu_opt(path)}"


def write_credential_files(directory: Path, credentials: Mapping[str, bytes]) -> None:
    """Each credential into its own file, mode 0600, in `directory` (made or made private: 0700).
    Files are created anew (O_EXCL, O_NOFOLLOW): a link planted in their place is never followed."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(directory)
    if not os.path.isdir(directory) or os.path.islink(directory) or info.st_uid != os.getuid():
        raise StepFailed("write the VM's credentials", f"{directory} is not a directory of this user's")
    os.chmod(directory, 0o700)
    for name, data in credentials.items():
        fw_cfg_credential(name, directory / name)  # checks the name before a file is made
        path = directory / name
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def qemu_opt(value: str | os.PathLike) -> str:
    """A value inside a QEMU -opt list (-drive file=..., -chardev path=...): commas are doubled."""
    return str(value).replace(",", ",,")



# Under TCG: every emulated feature (the SIMD OpenSSL and Go use) but two.
# - la57: 5-level paging, which no guest of a few GiB needs and which makes every emulated page walk
#   one level longer (VM pairs: QEMU used 2-4% less CPU without it, the first boot was ready 3-4% sooner).
# - erms: "fast REP MOVSB/STOSB". With it the guest kernel clears and copies pages, and glibc copies and
#   fills anything over a few KiB, with `rep movsb`/`rep stosb`, which QEMU 7.2 emulates one byte per
#   iteration; without it they use vector loops or `rep movsq`, eight bytes at a time. In the guest,
#   allocating 400 MiB went from about 2.4 s to 0.4-1.3 s; VM pairs (1 vCPU each, side by side, one each way):
#   first boot ready 6-10% sooner, a later boot 9-11% sooner. ERMS is only a speed hint: code must run
#   without it, and the real hardware under KVM keeps its own (-cpu host).
TCG_CPU = "max,la57=off,-erms"


def machine_args(name: str, machine: str, accel: str, cpus: int, memory_mb: int) -> list[str]:
    """The start of every QEMU command line here (the Fedora installer's and verify's): the machine,
    the accelerator (the host's CPU under KVM, TCG_CPU under TCG), no display."""
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"accel must be kvm or tcg, not {accel!r}")
    return ["qemu-system-x86_64", "-name", name, "-machine", machine, "-accel", accel,
            "-cpu", "host" if accel == "kvm" else TCG_CPU, "-smp", str(cpus), "-m", str(memory_mb),
            "-display", "none", "-monitor", "none"]


@dataclass(frozen=True)
class Hardware:
    """A target hypervisor's virtual hardware, as near as QEMU emulates it."""
    name: str
    machine: str        # QEMU machine type: q35, or pc (i440FX, the PIIX chipset VirtualBox and vSphere show)
    disk: str           # virtio | ahci | pvscsi | lsi53c895a (the controller the boot disk hangs on)
    nic: str            # the QEMU NIC model
    guest_drivers: tuple[str, ...] = ()   # the Linux drivers this hardware needs in the initramfs


# The rows of the boot matrix (tests/boot). VMware's default LSI Logic (mptspi) and LSI SAS
# (mptsas) controllers have no QEMU model: the matrix checks their modules in the initramfs instead.
HARDWARE = {
    # what virt-install picks for --os-variant debian12: q35, virtio disk and NIC
    "libvirt": Hardware("libvirt", "q35", "virtio", "virtio-net-pci", ("virtio_pci", "virtio_blk", "virtio_net")),
    # VirtualBox's defaults for a Linux VM: PIIX3 chipset, AHCI SATA, Intel PRO/1000 MT Desktop (82540EM)
    "virtualbox": Hardware("virtualbox", "pc", "ahci", "e1000", ("ahci", "e1000")),
    # vSphere's paravirtual choice: PVSCSI and VMXNET3 on the i440BX chipset
    "vsphere": Hardware("vsphere", "pc", "pvscsi", "vmxnet3", ("vmw_pvscsi", "vmxnet3")),
    # the parallel-SCSI LSI controller QEMU has (53C895A, Linux sym53c8xx)
    "lsi-scsi": Hardware("lsi-scsi", "pc", "lsi53c895a", "e1000", ("sym53c8xx", "e1000")),
}
DISK_CONTROLLERS = {"ahci": "ich9-ahci", "pvscsi": "pvscsi", "lsi53c895a": "lsi53c895a"}


def disk_args(hardware: Hardware, disk: Path) -> list[str]:
    """The boot disk on the hardware's controller (writeback honours the guest's flushes, so a
    SIGKILL loses no synced data)."""
    if hardware.disk == "virtio":
        return ["-drive", f"file={qemu_opt(disk)},format=qcow2,if=virtio,cache=writeback"]
    drive = f"file={qemu_opt(disk)},format=qcow2,cache=writeback"
    if hardware.disk not in DISK_CONTROLLERS:
        raise ValueError(f"disk controller must be virtio or one of {sorted(DISK_CONTROLLERS)}, "
                         f"not {hardware.disk!r}")
    on_bus = "ide-hd,bus=ctrl0.0" if hardware.disk == "ahci" else "scsi-hd,bus=ctrl0.0,scsi-id=0,lun=0"
    return ["-device", f"{DISK_CONTROLLERS[hardware.disk]},id=ctrl0",
            "-drive", f"{drive},if=none,id=disk0",
            "-device", f"{on_bus},drive=disk0,bootindex=0"]


@dataclass
class QemuSpec:
    """Everything the QEMU command line is made from (kept apart so it is unit-testable)."""
    disk: Path                                        # the overlay QEMU writes to
    cpus: int
    memory_mb: int
    accel: str                                        # 'kvm' | 'tcg'
    serial_socket: Path
    serial_log: Path
    pidfile: Path
    hostfwds: Mapping[int, int] = field(default_factory=dict)    # host port -> guest port
    guestfwds: Mapping[tuple[str, int], str] = field(default_factory=dict)  # (guest ip, port) -> host cmd
    credentials: Mapping[str, bytes] = field(default_factory=dict)
    credential_dir: Path | None = None                # where fw_cfg credential files go (0700, files 0600)
    uefi_vars: Path | None = None                     # a writable OVMF_VARS copy: boot UEFI; None: BIOS
    hardware: Hardware = HARDWARE["libvirt"]          # machine, disk controller and NIC
    seed_volumes: tuple[Path, ...] = ()               # raw read-only volumes (a CASEED seed), on virtio


_INLINE_VALUE = re.compile(r"(io\.systemd\.credential(?:\.binary)?:[^=,]*=|(?:^|,)string=)")


def loggable(cmd: list[str]) -> list[str]:
    """The command line as it may be logged. qemu_command puts no secret on it (credentials are
    fw_cfg files); should an inline value (`-smbios ...io.systemd.credential:NAME=VALUE`, `-fw_cfg
    ...,string=VALUE`) ever get in, everything after its first `=` is replaced by its length."""
    shown = []
    for arg in cmd:
        match = _INLINE_VALUE.search(arg)
        if match:
            arg = f"{arg[:match.end()]}<{len(arg) - match.end()} characters, not logged>"
        shown.append(arg)
    return shown


def qemu_command(spec: QemuSpec) -> list[str]:
    netdev = ["user", "id=net0"]
    netdev += [f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in spec.hostfwds.items()]
    netdev += [f"guestfwd=tcp:{ip}:{port}-cmd:{qemu_opt(cmd)}" for (ip, port), cmd in spec.guestfwds.items()]
    cmd = [
        *machine_args("ca-appliance-verify", spec.hardware.machine, spec.accel, spec.cpus, spec.memory_mb),
        "-parallel", "none",
        "-pidfile", str(spec.pidfile),
        *disk_args(spec.hardware, spec.disk),
        "-netdev", ",".join(netdev),
        "-device", f"{spec.hardware.nic},netdev=net0",
        "-device", "virtio-rng-pci",  # first boot generates keys: don't let it starve for entropy
        "-chardev", f"socket,id=serial0,path={qemu_opt(spec.serial_socket)},server=on,wait=off,"
                    f"logfile={qemu_opt(spec.serial_log)},logappend=on",
        "-serial", "chardev:serial0",
    ]
    if spec.uefi_vars is not None:
        cmd += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={qemu_opt(OVMF_CODE)}",
                "-drive", f"if=pflash,format=raw,unit=1,file={qemu_opt(spec.uefi_vars)}"]
    if spec.credentials and spec.credential_dir is None:
        raise ValueError("credentials need a credential_dir: they go to QEMU as files, never on its command line")
    for name in spec.credentials:
        cmd += ["-fw_cfg", fw_cfg_credential(name, spec.credential_dir / name)]
    for volume in spec.seed_volumes:
        cmd += ["-drive", f"file={qemu_opt(volume)},format=raw,if=virtio,readonly=on"]
    return cmd


class VM:
    """One appliance VM booted from an overlay of `image`.

    ports: name -> guest TCP port to forward from a free loopback port (`vm.ports[name]` is the
    host side). guestfwds: (guest ip, port) -> host shell command run per connection (its stdio
    is the connection). credentials: systemd credentials (name -> bytes).
    """

    def __init__(self, image: str | Path, workdir: str | Path, *, cpus: int, memory_mb: int, accel: str,
                 ports: Mapping[str, int] | None = None,
                 guestfwds: Mapping[tuple[str, int], str] | None = None,
                 credentials: Mapping[str, bytes] | None = None,
                 uefi: bool = False, hardware: Hardware | None = None, keep: bool = False, say=print):
        self.image = Path(image).resolve()
        self.workdir = Path(workdir)
        self.keep = keep
        self.say = say
        self.proc: subprocess.Popen | None = None
        self.guest_ports = dict(ports or {"ssh": 22})
        self.ports: dict[str, int] = {}
        for name in self.guest_ports:
            self.ports[name] = free_port(taken=self.ports.values())
        self.spec = QemuSpec(
            disk=self.workdir / "overlay.qcow2", cpus=cpus, memory_mb=memory_mb, accel=accel,
            serial_socket=self.workdir / "serial.sock", serial_log=self.workdir / "serial.log",
            pidfile=self.workdir / "qemu.pid",
            hostfwds={self.ports[n]: p for n, p in self.guest_ports.items()},
            guestfwds=dict(guestfwds or {}), credentials=dict(credentials or {}),
            credential_dir=self.workdir / "credentials",
            uefi_vars=self.workdir / "OVMF_VARS.fd" if uefi else None,
            hardware=hardware or HARDWARE["libvirt"])
        self.qemu_log = self.workdir / "qemu.log"

    @property
    def serial_log(self) -> Path:
        return self.spec.serial_log

    # ---- lifecycle

    def create_overlay(self) -> None:
        """A fresh qcow2 overlay on the image: the image itself is only ever read."""
        if not self.image.is_file():
            raise UserError(f"--image: {str(self.image)!r} does not exist (give a built .qcow2)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        fmt = image_format(self.image)
        checked_output("copy-on-write overlay", ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.image),
                                                 "-F", fmt, str(self.spec.disk)])
        if self.spec.uefi_vars is not None:
            shutil.copyfile(OVMF_VARS, self.spec.uefi_vars)
        if self.spec.credentials:
            write_credential_files(self.spec.credential_dir, self.spec.credentials)

    def start(self) -> None:
        """Boot (the overlay is created on the first start and kept across restarts)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("the VM is already running")
        if not self.spec.disk.exists():
            self.create_overlay()
        self.spec.serial_socket.unlink(missing_ok=True)
        cmd = qemu_command(self.spec)
        with open(self.qemu_log, "a") as log:
            log.write(f"$ {shlex.join(loggable(cmd))}\n")
            log.flush()
            try:
                # long-lived (the VM runs while we talk to it): Popen, ended by stop_process. Its own
                # session: a Ctrl-C in the terminal reaches us, and we stop QEMU ourselves
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             start_new_session=True)
            except FileNotFoundError:
                raise UserError("qemu-system-x86_64 is not installed; install it with "
                                "'apt-get install qemu-system-x86 qemu-utils'") from None
        deadline = time.monotonic() + 30
        while not self.spec.serial_socket.exists():
            self.check_alive("start QEMU")
            if time.monotonic() > deadline:
                raise StepFailed("start QEMU", "no serial console socket after 30s", self.qemu_log)
            time.sleep(0.1)

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self, step: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            detail = f"qemu exited with status {self.proc.returncode}"
            last = tail(self.qemu_log, 10)
            raise StepFailed(step, detail + ("\n" + last if last else ""), self.qemu_log)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop QEMU now (SIGKILL: as if the power was cut) and wait for it to be gone."""
        if self.proc is None:
            return
        stop_process(self.proc, grace=30, sig=sig)
        self.proc = None

    def close(self) -> None:
        if self.keep and self.is_running():
            self.say(f"VM left running (--keep): qemu pid {self.proc.pid}, files in {self.workdir}\n"
                     f"  ssh:     ssh -p {self.ports.get('ssh')} -o StrictHostKeyChecking=no ADMIN@127.0.0.1\n"
                     f"  console: socat -,rawer UNIX-CONNECT:{self.spec.serial_socket}\n"
                     f"  stop:    kill {self.proc.pid}")
            return
        self.kill()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> VM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- talking to the guest

    def console(self, timeout: float = 60, logfile=None):
        """A pexpect session on the serial console (closing it leaves QEMU logging on its own). The log
        gets what the console shows, never what is typed: a typed password is not echoed, so not logged."""
        from pexpect import fdpexpect
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.spec.serial_socket))
        session = fdpexpect.fdspawn(sock, timeout=timeout, encoding="utf-8", codec_errors="replace")
        session.logfile_read = logfile  # an attribute: fdspawn() takes no logfile_read argument
        session._verify_socket = sock  # keep the socket alive as long as the session
        return session

    def serial_tail(self, lines: int = 30) -> str:
        return tail(self.serial_log, lines)

    def wait_for_ssh(self, user: str, key_file: Path, timeout: float = 300):
        """A connected paramiko SSHClient as `user`, once the guest lets that key in."""
        import paramiko
        # refused tries are expected while the guest boots: keep paramiko's tracebacks off the terminal
        logging.getLogger("paramiko").addHandler(logging.NullHandler())
        deadline = time.monotonic() + timeout
        last_error = "no answer"
        while time.monotonic() < deadline:
            self.check_alive("wait for SSH")
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            # QEMU accepts on the forwarded port even before sshd runs: bound each try by what is left
            patience = max(5.0, min(30.0, deadline - time.monotonic()))
            try:
                client.connect("127.0.0.1", port=self.ports["ssh"], username=user, key_filename=str(key_file),
                               timeout=10, banner_timeout=patience, auth_timeout=patience, allow_agent=False,
                               look_for_keys=False)
                return client
            except (OSError, paramiko.SSHException, EOFError) as e:
                last_error = f"{type(e).__name__}: {e}"
                client.close()
                time.sleep(3)
        raise StepFailed("wait for SSH",
                         f"no SSH login as {user} on 127.0.0.1:{self.ports['ssh']} within {timeout:.0f}s "
                         f"(last: {last_error}); serial console, last lines:\n{self.serial_tail()}",
                         self.serial_log)


def image_format(path: Path) -> str:
    """qcow2 or raw, from the file's first bytes (qemu-img refuses to guess for backing files)."""
    with open(path, "rb") as f:
        return "qcow2" if f.read(4) == b"QFI\xfb" else "raw"
