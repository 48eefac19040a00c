"""Disk assembly: a sparse raw GPT disk that boots under BIOS and UEFI, as Debian's and Fedora's cloud images do.

Layout: a 1 MiB BIOS boot partition (GRUB's i386-pc core image, BIOS firmware), an EFI system
partition (FAT32, GRUB's x86_64-efi image at the removable path \\EFI\\BOOT\\BOOTX64.EFI, which any
UEFI firmware boots without an NVRAM entry: OVMF, vSphere's and VirtualBox's EFI), and the ext4
root file system last, so it can grow into an enlarged disk. Both GRUBs find the root by its
file system UUID and read the same /boot/grub/grub.cfg.

The file system is made straight from the rootfs directory (`mkfs.ext4 -d`, written at the
partition's offset inside the disk file), so filling it needs no mount at all. The only loop
devices and the only mount of a build are the few seconds grub-install needs: it reads the
file system's UUID from the mounted /boot to embed `search.fs_uuid` in its core image, and
writes the boot code through the whole-disk loop device. Fewer mounts, less to leak.

Every loop device and mount is a context manager that releases it on any exit, Ctrl-C
included; `release_stale()` also frees what a killed earlier build left under a directory.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from image.errors import StepFailed
from image.runner import Runner, checked_output, probe

SECTOR = 512
MIB = 1 << 20
BIOS_BOOT_START, BIOS_BOOT_SIZE = MIB, MIB   # GRUB's i386-pc core image (about 100 KiB) goes here
ESP_START, ESP_SIZE = 2 * MIB, 126 * MIB     # FAT32 needs 32 MiB or more; room for a shim later
ROOT_START = ESP_START + ESP_SIZE            # 128 MiB: aligned for every storage backend
EXT4_BLOCK = 4096
# modules built into both core images: enough to find the root by UUID and read /boot/grub
GRUB_MODULES = "part_gpt ext2"
# GPT partition type GUIDs (UEFI spec; the BIOS boot one is GRUB's "Hah!IdontNeedEFI")
BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_FS_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ESP_LABEL = "EFI"
EFI_REMOVABLE_PATH = "EFI/BOOT/BOOTX64.EFI"
GRUB_EFI_LIB = Path("/usr/lib/grub/x86_64-efi")   # grub-efi-amd64-bin (Fedora: grub2-efi-x64-modules)


@dataclass(frozen=True)
class Partition:
    offset: int     # bytes from the start of the disk
    size: int       # bytes
    type: str = ""  # GPT partition type GUID (upper case), or the MBR type in hex


@dataclass(frozen=True)
class Layout:
    """The three partitions of an appliance disk, in disk order."""
    bios_boot: Partition
    esp: Partition
    root: Partition


@contextmanager
def _shielded_from_ctrl_c() -> Iterator[None]:
    """Let a release finish even when Ctrl-C is pressed again while it runs."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:          # not the main thread: signals cannot be changed, nothing to shield
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _retry(cmd: list[str], runner: Runner, attempts: int = 5) -> bool:
    """Run a release command, retrying while the kernel still holds the device busy."""
    for i in range(attempts):
        if runner.run(cmd, check=False).returncode == 0:
            return True
        time.sleep(0.2 * (i + 1))
    return False


def detach_loop(device: str, runner: Runner) -> None:
    with _shielded_from_ctrl_c():
        if not _retry(["losetup", "-d", device], runner):
            raise StepFailed(runner.step_name, f"could not detach loop device {device}", runner.log_path)


def unmount(mountpoint: Path, runner: Runner) -> None:
    with _shielded_from_ctrl_c():
        if _retry(["umount", str(mountpoint)], runner):
            return
        # still busy: detach it from the tree now, the kernel finishes once the last user is gone
        if runner.run(["umount", "--lazy", str(mountpoint)], check=False).returncode != 0:
            raise StepFailed(runner.step_name, f"could not unmount {mountpoint}", runner.log_path)


@contextmanager
def loop_device(path: Path, runner: Runner, *, offset: int | None = None, size: int | None = None,
                read_only: bool = False) -> Iterator[str]:
    """A loop device over `path` (or over the byte range offset..offset+size of it), always detached."""
    cmd = ["losetup", "--find", "--show"]
    if offset is not None:
        cmd += ["--offset", str(offset)]
    if size is not None:
        cmd += ["--sizelimit", str(size)]
    if read_only:
        cmd.append("--read-only")
    # attach with Ctrl-C shielded: an interrupt between attach and `yield` would leak the device
    with _shielded_from_ctrl_c():
        device = runner.output(cmd + [str(path)]).strip()
    try:
        yield device
    finally:
        detach_loop(device, runner)


@contextmanager
def mounted(device: str, mountpoint: Path, runner: Runner, *, options: str | None = None) -> Iterator[Path]:
    """`device` mounted at `mountpoint` (created if missing), always unmounted."""
    mountpoint = Path(mountpoint)
    mountpoint.mkdir(parents=True, exist_ok=True)
    cmd = ["mount"] + (["-o", options] if options else []) + [device, str(mountpoint)]
    with _shielded_from_ctrl_c():
        runner.run(cmd)
    try:
        yield mountpoint
    finally:
        unmount(mountpoint, runner)


def _decode_mount_path(field: str) -> str:
    """/proc/self/mountinfo escapes space, tab, newline and backslash as octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounts_under(directory: Path) -> list[Path]:
    """Mount points at or below `directory`, deepest first (the order to unmount them in)."""
    root = os.path.realpath(directory)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _decode_mount_path(line.split()[4])
            if point == root or point.startswith(root.rstrip("/") + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def loops_backed_by(directory: Path) -> list[str]:
    """Loop devices whose backing file lies under `directory`."""
    root = os.path.realpath(directory).rstrip("/") + "/"
    proc = probe(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"])
    out = proc.stdout if proc is not None else ""
    devices = json.loads(out or '{"loopdevices": []}').get("loopdevices", [])
    # the kernel reports the backing file as "/path (deleted)" once it was removed
    return [d["name"] for d in devices
            if (d.get("back-file") or "").removesuffix(" (deleted)").startswith(root)]


def processes_rooted_under(directory: Path) -> list[int]:
    """PIDs of processes chrooted into `directory`: a build's own chroot children (not a shell cd'ed there)."""
    root = os.path.realpath(directory).rstrip("/") + "/"
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            where = os.readlink(f"/proc/{entry}/root")
        except OSError:   # gone meanwhile, or not ours to see
            continue
        if (where.rstrip("/") + "/").startswith(root):
            pids.append(int(entry))
    return pids


def stop_processes_under(directory: Path, runner: Runner, grace: float = 3.0) -> None:
    """After Ctrl-C, dpkg or a maintainer script may still run in the chroot, keeping its mounts busy."""
    pids = processes_rooted_under(directory)
    if not pids:
        return
    runner.say(f"    stopping {len(pids)} process(es) still running inside {directory}")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and processes_rooted_under(directory):
            time.sleep(0.1)
        pids = processes_rooted_under(directory)
        if not pids:
            return


def release_stale(directory: Path, runner: Runner) -> None:
    """Unmount and detach whatever an interrupted or killed earlier run left under `directory`."""
    if not Path(directory).exists():
        return
    stop_processes_under(directory, runner)
    for point in mounts_under(directory):
        runner.say(f"    unmounting {point}, left over from an earlier run")
        unmount(point, runner)
    for device in loops_backed_by(directory):
        runner.say(f"    detaching {device}, left over from an earlier run")
        detach_loop(device, runner)


def remove_tree(directory: Path, runner: Runner) -> None:
    """rm -r that never descends into a mount (a chroot's /dev or /proc bind mount would be the host's)."""
    directory = Path(directory)
    if not directory.exists() and not directory.is_symlink():
        return
    release_stale(directory, runner)
    left = mounts_under(directory)
    if left:
        raise StepFailed(runner.step_name, f"refusing to delete {directory}: {left[0]} is still mounted",
                         runner.log_path)
    with _shielded_from_ctrl_c():
        if directory.is_dir() and not directory.is_symlink():
            shutil.rmtree(directory)
        else:
            directory.unlink()


def partition_script() -> str:
    """The sfdisk script of the layout (sizes in sectors; the root partition fills the rest)."""
    def sectors(n: int) -> int:
        return n // SECTOR
    return ("label: gpt\n"
            f"start={sectors(BIOS_BOOT_START)}, size={sectors(BIOS_BOOT_SIZE)}, type={BIOS_BOOT_TYPE}, "
            "name=\"bios-boot\"\n"
            f"start={sectors(ESP_START)}, size={sectors(ESP_SIZE)}, type={ESP_TYPE}, name=\"esp\"\n"
            f"start={sectors(ROOT_START)}, type={LINUX_FS_TYPE}, name=\"root\"\n")


def create_disk(path: Path, size_bytes: int, runner: Runner) -> Layout:
    """A sparse raw disk of size_bytes with a GPT: BIOS boot, EFI system and root partitions."""
    path = Path(path)
    if size_bytes < ROOT_START + 64 * MIB:
        raise StepFailed(runner.step_name, f"disk size {size_bytes} is too small: the root partition starts "
                         f"at {ROOT_START} bytes", runner.log_path)
    with open(path, "wb") as f:
        f.truncate(size_bytes)
    runner.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(path)],
               input=partition_script().encode())
    parts = read_partitions(path)
    if [p.type for p in parts] != [BIOS_BOOT_TYPE, ESP_TYPE, LINUX_FS_TYPE]:
        raise StepFailed(runner.step_name, f"sfdisk wrote partitions of types {[p.type for p in parts]}, "
                         "expected BIOS boot, EFI system, Linux", runner.log_path)
    # the root file system is made in whole 4 KiB blocks; the GPT backup header takes the disk's tail
    root = parts[2]
    root = Partition(root.offset, root.size - root.size % EXT4_BLOCK, root.type)
    return Layout(bios_boot=parts[0], esp=parts[1], root=root)


def read_partitions(path: Path) -> list[Partition]:
    """The partitions of a raw disk image, as byte ranges with their types (from `sfdisk --json`)."""
    out = checked_output("read partitions", ["sfdisk", "--json", str(path)])
    table = json.loads(out)["partitiontable"]
    unit = table.get("sectorsize", SECTOR)
    return [Partition(p["start"] * unit, p["size"] * unit, str(p.get("type", "")).upper())
            for p in table.get("partitions", [])]


MBR_SIGNATURE = b"\x55\xaa"
MBR_ENTRIES_AT = 446                 # four 16-byte partition entries, then the signature at 510
PROTECTIVE_MBR_TYPE = 0xEE           # the one entry of a GPT disk's protective MBR (UEFI spec 5.2.3)
BOOT_INDICATOR = 0x80


def protective_mbr_boot_flag(path: Path) -> bool:
    """Whether the protective MBR of a GPT disk image marks its 0xEE entry bootable (boot indicator
    0x80, parted's `pmbr_boot`). The UEFI spec wants 0x00 there; blivet sets it on BIOS installs, and
    some UEFI firmware (EDK2 before mid-2021, some vendors') then refuses the disk. Read from the
    image's first sector: no root, no loop device. StepFailed for a disk without a protective MBR."""
    try:
        with open(path, "rb") as f:
            sector = f.read(SECTOR)
    except OSError as e:
        raise StepFailed("read the protective MBR", f"{path}: {e.strerror or e}") from None
    if len(sector) < SECTOR or sector[510:512] != MBR_SIGNATURE:
        raise StepFailed("read the protective MBR", f"{path} has no MBR (no 55AA signature in its first sector)")
    for i in range(4):
        entry = sector[MBR_ENTRIES_AT + 16 * i:MBR_ENTRIES_AT + 16 * (i + 1)]
        if entry[4] == PROTECTIVE_MBR_TYPE:
            return entry[0] == BOOT_INDICATOR
    raise StepFailed("read the protective MBR", f"{path} has no protective MBR entry (type 0xEE): not a GPT disk")


def root_partition(path: Path) -> Partition:
    """The root file system's partition of an appliance disk: the last Linux one (the GPT also
    holds the BIOS boot partition and the ESP, which come first)."""
    roots = [p for p in read_partitions(path) if p.type == LINUX_FS_TYPE]
    if not roots:
        raise StepFailed("read partitions", f"{path} has no Linux file system partition")
    return roots[-1]


def make_ext4_from_dir(disk: Path, part: Partition, rootfs: Path, *, uuid: str, label: str,
                       runner: Runner) -> None:
    """Create the partition's ext4 file system from the rootfs directory, inside the disk file."""
    if part.size % EXT4_BLOCK:
        raise StepFailed(runner.step_name, f"partition size {part.size} is not a multiple of {EXT4_BLOCK}",
                         runner.log_path)
    runner.run(["mkfs.ext4", "-q", "-F", "-b", str(EXT4_BLOCK), "-U", uuid, "-L", label,
                # root_owner is irrelevant with -d: owners, modes and xattrs come from the tree
                "-E", f"offset={part.offset}", "-d", str(rootfs),
                str(disk), str(part.size // EXT4_BLOCK)])
    # a clean fsck is the proof the file system is complete before anything boots from it
    with loop_device(disk, runner, offset=part.offset, size=part.size, read_only=True) as dev:
        runner.run(["e2fsck", "-f", "-n", dev])


def install_grub(disk: Path, layout: Layout, workdir: Path, runner: Runner) -> None:
    """GRUB for both firmwares: i386-pc into the BIOS boot partition (boot code in the protective
    MBR), x86_64-efi as the ESP's removable path; the modules of both go to the root's /boot/grub.

    The ESP's FAT file system is made and filled here without mounting it (mtools): a build host's
    kernel need not have vfat. The UEFI core image gets the same early config grub-install wrote for
    BIOS (search the root by UUID, prefix /boot/grub), so both read the grub.cfg the base wrote.
    """
    workdir = Path(workdir)
    efi_image = workdir / "BOOTX64.EFI"
    with loop_device(disk, runner) as whole, \
            loop_device(disk, runner, offset=layout.esp.offset, size=layout.esp.size) as esp_dev, \
            loop_device(disk, runner, offset=layout.root.offset, size=layout.root.size) as root_dev:
        runner.run(["mkfs.vfat", "-F", "32", "-n", ESP_LABEL, esp_dev])
        with mounted(root_dev, workdir / "mnt", runner) as mnt:
            grub_dir = mnt / "boot" / "grub"
            runner.run(["grub-install", "--target=i386-pc", f"--boot-directory={mnt}/boot",
                        f"--modules={GRUB_MODULES}", "--no-floppy", whole])
            early_config = grub_dir / "i386-pc" / "load.cfg"
            if not (grub_dir / "i386-pc" / "core.img").exists() or not early_config.exists():
                raise StepFailed(runner.step_name, "grub-install left no core.img or load.cfg in /boot/grub/i386-pc",
                                 runner.log_path)
            # what grub-install --target=x86_64-efi would do, minus its demand for a mounted FAT ESP
            (grub_dir / "x86_64-efi").mkdir(exist_ok=True)
            for module in [*GRUB_EFI_LIB.glob("*.mod"), *GRUB_EFI_LIB.glob("*.lst")]:
                shutil.copyfile(module, grub_dir / "x86_64-efi" / module.name)
            runner.run(["grub-mkimage", "--format=x86_64-efi", f"--directory={GRUB_EFI_LIB}",
                        f"--config={early_config}", "--prefix=", f"--output={efi_image}",
                        *GRUB_MODULES.split(), "search_fs_uuid"])
            if not (grub_dir / "grub.cfg").exists():
                raise StepFailed(runner.step_name, "the tree has no /boot/grub/grub.cfg", runner.log_path)
        env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
        runner.run(["mmd", "-i", esp_dev, "::/EFI", "::/EFI/BOOT"], env=env)
        runner.run(["mcopy", "-i", esp_dev, efi_image, "::/" + EFI_REMOVABLE_PATH], env=env)
    efi_image.unlink()
