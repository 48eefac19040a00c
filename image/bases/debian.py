"""The Debian base: a minimal Debian rootfs from mmdebstrap, made into a raw disk that boots BIOS and UEFI.

Suites: trixie (Debian 13, the default) and bookworm (Debian 12); the package set, unit names and
paths are the same in both, and the one difference the appliance must undo (Debian 13's
openssh-server enables sshd-keygen.service) is a row of the guest's DISTROS table.

Offline-capable (any Debian mirror, file:// included) and needs no VM: the rootfs is
bootstrapped into a directory, the payload and artifacts laid in, then the guest's own
`ca-appliance provision --base debian` run inside it through chroot (users, units, initramfs,
generalisation: the code the Fedora kickstart runs too), then turned into the disk's ext4 file
system without mounting it (image.disk).

Rebuilds cost what changed (docs/performance.md, "Rebuilds"): the bootstrapped tree comes from the
base-tree cache, and the initramfs, the one expensive step of provision that does not depend on the
payload, from the initramfs cache, keyed by the base tree's key and every file of the laid tree the
initramfs is made from (`initramfs_inputs`). Both are made reproducibly (SOURCE_DATE_EPOCH, a root
file system UUID derived from the build's inputs), so a warm build lays the same file tree as a cold one.
"""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import tarfile
import threading
import uuid as uuidlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from image.bases import BaseResult
from image.cache import TreeCache, cache_dir, cache_key, digest_files, trees_dir
from image.config import PROJECT_ROOT, Config
from image.disk import create_disk, install_grub, make_ext4_from_dir, remove_tree, unmount
from image.errors import StepFailed, UserError
from image.files import sha256_file
from image.runner import Runner

REQUIRED_TOOLS = {
    "mmdebstrap": ("mmdebstrap", "mmdebstrap"),
    "sfdisk": ("fdisk", "util-linux"),
    "losetup": ("mount", "util-linux"),
    "mkfs.ext4": ("e2fsprogs", "e2fsprogs"),
    "e2fsck": ("e2fsprogs", "e2fsprogs"),
    "grub-install": ("grub2-common", "grub2-tools"),
    "mkfs.vfat": ("dosfstools", "dosfstools"),
    "mcopy": ("mtools", "mtools"),
    "grub-mkimage": ("grub-common", "grub2-tools"),
    "systemctl": ("systemd", "systemd"),
    "tar": ("tar", "tar"),
    "unshare": ("util-linux", "util-linux"),
}
NEEDS_ROOT = True
PROVISION_BASE = "debian"
# grub-install --target=i386-pc needs the BIOS modules, which no command stands for
GRUB_BIOS_MODULES = Path("/usr/lib/grub/i386-pc")
GRUB_EFI_MODULES = Path("/usr/lib/grub/x86_64-efi")   # and the UEFI ones (grub-efi-amd64-bin)

FILES_DIR = Path(__file__).resolve().parent / "debian_files"   # base-specific files laid into the rootfs
ROOT_LABEL = "root"
SLIM_DIR = Path(__file__).resolve().parent / "debian_slim"   # build-time only, not laid into the rootfs
# the import targets' drivers: the guest's provision puts them in the initramfs; slimming must keep them
DRIVER_LIST = PROJECT_ROOT / "overlay/usr/lib/ca-appliance/initramfs-drivers.txt"
# modules the slimming must never take away, beside those the driver hook names
REQUIRED_MODULES = ("ext4", "sym53c8xx", "hv_storvsc", "hv_netvsc", "vmwgfx", "virtio_gpu", "bochs", "usbhid")

PACKAGES = (
    "linux-image-amd64", "initramfs-tools", "systemd", "systemd-sysv", "dbus",
    "network-manager", "firewalld", "openssh-server", "chrony", "sudo", "ca-certificates", "curl",
    "python3", "python3-cryptography", "python3-jwcrypto", "python3-yaml",
    "python3-pymysql", "python3-psycopg2",   # the shared-database check (ca_appliance/database.py)
    "qemu-guest-agent", "open-vm-tools", "grub-pc", "cloud-guest-utils", "e2fsprogs",
    "iproute2", "less",
    "netbase",  # /etc/protocols and /etc/services: firewalld refuses to start without them
    "zstd",     # initramfs-tools compresses with it when present (else gzip): faster to unpack at boot
    # mmdebstrap merges /usr itself, so this meets bookworm's init-system-helpers' "usrmerge |
    # usr-is-merged". On bookworm usrmerge (and with it perl, ~50 MB) still comes in mmdebstrap's
    # essential phase; trixie's needs neither (its image has no usrmerge and no perl, only perl-base)
    "usr-is-merged",
)
# Keep the image lean: no manuals, docs (licences stay) or translations.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*", "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
)
PACKAGE_KIND = "deb"   # step-ca and step as smallstep's amd64 .debs (image.artifacts.PACKAGE_FORMATS)
# the OVF's OperatingSystemSection: CIM_OperatingSystem id, vSphere guest id, description
OVA_GUEST_OS = (96, "debian12_64Guest", "Debian GNU/Linux (64-bit)")

# updates.security: daily security updates from the security archive only (it is in sources.list
# already: sources()); provision enables the timers, payload lays the files and the restart drop-in.
UPDATE_PACKAGES = ("unattended-upgrades",)
UPDATE_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer")
UPDATE_SERVICE = "apt-daily-upgrade.service"
AUTO_UPGRADES = """// Written by the appliance build (updates.security): refresh the lists and install
// security updates every day (apt-daily.timer, apt-daily-upgrade.timer).
APT::Periodic::Update-Package-Lists "1";
APT::Periodic::Unattended-Upgrade "1";
APT::Periodic::AutocleanInterval "7";
"""
SECURITY_ONLY = """// Written by the appliance build (updates.security): security updates only, not point
// releases; never reboot by itself (step-ca is restarted when needed, see the drop-in).
#clear Unattended-Upgrade::Origins-Pattern;
Unattended-Upgrade::Origins-Pattern {
        "origin=Debian,codename=${distro_codename}-security,label=Debian-Security";
};
Unattended-Upgrade::Automatic-Reboot "false";
"""
UPDATE_FILES = {"etc/apt/apt.conf.d/20auto-upgrades": AUTO_UPGRADES,
                "etc/apt/apt.conf.d/52ca-appliance-security-only": SECURITY_ONLY}
# panic=10: a guest kernel that panics (seen once under QEMU TCG, 5 s into boot) reboots instead of hanging,
# and the first boot resumes. The serial console stays last: it is /dev/console.
KERNEL_CMDLINE = "ro panic=10 console=tty0 console=ttyS0,115200n8"


def check_host() -> None:
    """What REQUIRED_TOOLS cannot express; called before any work."""
    if not (GRUB_BIOS_MODULES / "modinfo.sh").exists():
        raise UserError(f"missing host files: {GRUB_BIOS_MODULES} (GRUB's BIOS modules); install them with "
                        "'apt-get install grub-pc-bin' or 'dnf install grub2-pc-modules'")
    if not (GRUB_EFI_MODULES / "modinfo.sh").exists():
        raise UserError(f"missing host files: {GRUB_EFI_MODULES} (GRUB's UEFI modules); install them with "
                        "'apt-get install grub-efi-amd64-bin' or 'dnf install grub2-efi-x64-modules'")


def apt_cache_dir(cfg: Config) -> Path:
    """Downloaded .debs kept between builds, so a second build downloads (almost) nothing."""
    return cache_dir() / "debian" / cfg.debian.suite / "archives"


def sources(cfg: Config) -> list[str]:
    suite, mirror = cfg.debian.suite, cfg.debian.mirror
    lines = [f"deb {mirror} {suite} main", f"deb {mirror} {suite}-updates main"]
    # security updates live beside the official mirror; a private mirror carries its own
    if re.fullmatch(r"https?://deb\.debian\.org/debian", mirror):
        lines.append(f"deb {mirror}-security {suite}-security main")
    return lines


def fstab_text(root_uuid: str) -> str:
    return ("# <file system> <mount point> <type> <options> <dump> <pass>\n"
            f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n")


def q(path) -> str:
    """A path quoted for mmdebstrap's hooks (shell commands, and special hooks split like shell words)."""
    return shlex.quote(str(path))


def mmdebstrap_command(cfg: Config, rootfs: Path, debs: list[Path], used_debs_list: Path) -> list[str]:
    cache = apt_cache_dir(cfg)
    cmd = ["mmdebstrap", "--mode=root", "--variant=minbase", "--components=main",
           "--include=" + ",".join(PACKAGES + (UPDATE_PACKAGES if cfg.updates.security else ())),
           # keep every .deb downloaded this time in the chroot, to be copied out to the cache
           "--skip=essential/unlink",
           "--aptopt=Acquire::Retries \"3\"",
           f"--setup-hook=mkdir -p {q(cache)} \"$1\"/var/cache/apt/archives",
           f"--setup-hook=sync-in {q(cache)} /var/cache/apt/archives/",
           # before the kernel's postinst builds the initramfs: the driver hook, the root file system
           # type (so fsck.ext4 goes in; there is no device to probe at build time), the blacklist
           "--essential-hook=mkdir -p \"$1\"/etc/initramfs-tools \"$1\"/etc/modprobe.d",
           f"--essential-hook=sync-in {q(FILES_DIR / 'etc/initramfs-tools')} /etc/initramfs-tools",
           f"--essential-hook=sync-in {q(FILES_DIR / 'etc/modprobe.d')} /etc/modprobe.d"]
    cmd += [f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES]
    # no fsync per unpacked file while building (the tree is thrown away on failure anyway); the
    # appliance's own dpkg must stay safe, so the option leaves the image's dpkg.cfg.d afterwards
    cmd += ["--dpkgopt=force-unsafe-io",
            "--customize-hook=sed -i '/^force-unsafe-io$/d' \"$1\"/etc/dpkg/dpkg.cfg.d/99mmdebstrap"]
    for deb in debs:   # local step-ca / step .debs: apt resolves their dependencies
        inside = q(f"/tmp/{deb.name}")
        cmd += [f"--customize-hook=copy-in {q(deb)} /tmp/",
                f"--customize-hook=chroot \"$1\" apt-get install -y --no-install-recommends {inside}",
                f"--customize-hook=rm -f \"$1\"{inside}"]
    # smaller image, faster boot: modules no VM target has, then a leaner initramfs (slim.sh)
    cmd.append(f"--customize-hook=sh {q(SLIM_DIR / 'slim.sh')} \"$1\"")
    cmd += [f"--customize-hook=sync-out /var/cache/apt/archives {q(cache)}",
            f"--customize-hook=ls \"$1\"/var/cache/apt/archives > {q(used_debs_list)}"]
    if cfg.debian.mirror.startswith("file://"):
        cmd.append("--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount")
    cmd += [cfg.debian.suite, str(rootfs)] + sources(cfg)
    return cmd


def slim_rules() -> dict[str, str]:
    return digest_files(SLIM_DIR)


def required_modules() -> list[str]:
    """The import targets' drivers (DRIVER_LIST, as provision reads it) and REQUIRED_MODULES."""
    lines = (line.split("#", 1)[0].strip() for line in DRIVER_LIST.read_text().splitlines())
    return sorted({line for line in lines if line} | set(REQUIRED_MODULES))


def check_required_modules(rootfs: Path) -> None:
    """After slimming, every driver an import target needs is still there, with its dependencies."""
    for moddir in sorted((rootfs / "usr/lib/modules").glob("*/")):
        deps = {}
        for line in (moddir / "modules.dep").read_text().splitlines():
            module, _, needs = line.partition(":")
            deps[Path(module).name.split(".ko")[0].replace("-", "_")] = [module, *needs.split()]
        builtin = (moddir / "modules.builtin").read_text() if (moddir / "modules.builtin").exists() else ""
        builtin_names = {Path(x).name.split(".ko")[0].replace("-", "_") for x in builtin.split()}
        for name in required_modules():
            key = name.replace("-", "_")
            if key in builtin_names:
                continue
            files = deps.get(key)
            missing = [f for f in (files or []) if not (moddir / f).exists()]
            if files is None or missing:
                raise StepFailed("debian: bootstrap", f"kernel module {name} (a VM target's driver) is missing "
                                 f"after slimming {moddir.name}: {missing or 'not in modules.dep'}; "
                                 f"fix {SLIM_DIR / 'modules-to-drop.txt'}")


def prune_apt_cache(cfg: Config, used_debs_list: Path) -> None:
    """Drop cached .debs this build no longer used (superseded versions), so the cache stays bounded."""
    try:
        used = set(used_debs_list.read_text().split())
    except OSError:
        return
    for deb in apt_cache_dir(cfg).glob("*.deb"):
        if deb.name not in used:
            deb.unlink()


QUIET_PROGRESS = re.compile(r"running |chroot architecture|finding correct|automatically chosen|skipping ")


@contextmanager
def echo_progress(runner: Runner, prefix: str = "I: ") -> Iterator[None]:
    """Show mmdebstrap's phase lines ("I: installing ...") from the log while it runs."""
    stop = threading.Event()
    start = runner.log_path.stat().st_size if runner.log_path.exists() else 0

    def follow():
        pos = start
        while not stop.is_set():
            stop.wait(1.0)
            try:
                with open(runner.log_path, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
            except OSError:
                continue
            complete = chunk[:chunk.rfind(b"\n") + 1]
            pos += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                if line.startswith(prefix) and not QUIET_PROGRESS.match(line[len(prefix):]):
                    print(f"    {line[len(prefix):]}", file=runner.out, flush=True)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _install_file(src: Path, dest: Path, mode: int) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    os.chown(dest, 0, 0)
    os.chmod(dest, mode)


def _write(dest: Path, text: str, mode: int = 0o644) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    os.chmod(dest, mode)


def lay_base_files(rootfs: Path) -> None:
    """The Debian base's own boot files (GRUB defaults, initramfs root type, floppy blacklist)."""
    for src in sorted(FILES_DIR.rglob("*")):
        if src.is_file():
            mode = 0o755 if os.stat(src).st_mode & 0o111 else 0o644
            _install_file(src, rootfs / src.relative_to(FILES_DIR), mode)


def install_binaries(rootfs: Path, artifacts: list) -> None:
    """kind 'binary' artifacts (CI: step-ca built from Debian's Go sources) go to /usr/bin."""
    names = {"step-ca": "step-ca", "step-cli": "step"}
    for art in artifacts:
        if art.kind == "binary":
            _install_file(Path(art.path), rootfs / "usr/bin" / names[art.name], 0o755)


def check_artifact_kinds(artifacts: list) -> list[Path]:
    """The .debs to install; an RPM cannot go into a Debian image."""
    for art in artifacts:
        if art.kind not in ("deb", "binary"):
            raise UserError(f"artifacts: {art.name} is a {art.kind!r} package ({art.path}); "
                            "the debian base takes a .deb or a binary")
    return [Path(a.path) for a in artifacts if a.kind == "deb"]


# The chroot gets /proc, /sys and /dev for update-initramfs, in a private mount namespace: the
# mounts end with the process, so a failed or interrupted provision leaves none behind. "$1", when
# not empty, is bind-mounted over update-initramfs.conf in that namespace only (initramfs_conf_override):
# the tree's own file is never changed. "$2" is the tree.
PROVISION_SCRIPT = """set -eu
initramfs_conf="$1"
root="$2"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
if [ -n "$initramfs_conf" ]; then
    mount --bind "$initramfs_conf" "$root/etc/initramfs-tools/update-initramfs.conf"
fi
exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \\
    /usr/bin/ca-appliance provision --base debian
"""


def provision_command(rootfs: Path, initramfs_conf: Path | None = None) -> list[str]:
    """The guest's own provisioning (users, units, initramfs, generalisation) run inside the rootfs:
    the same program the Fedora kickstart's %post runs. initramfs_conf: what update-initramfs reads
    instead of the tree's update-initramfs.conf during this run."""
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", PROVISION_SCRIPT,
            "provision", str(initramfs_conf or ""), str(rootfs)]


# --- the initramfs cache: provision's update-initramfs is the one step of the configure stage that
# costs seconds and does not depend on the payload (unless the payload changes what it reads)

INITRAMFS_FORMAT = 1     # bump when what an entry holds or how the initramfs is made changes
UPDATE_INITRAMFS_CONF = "etc/initramfs-tools/update-initramfs.conf"
# What mkinitramfs and its hooks read besides the packages' files (which the base tree's key covers):
# the payload's files below these go into the key. The executables and libraries are there because the
# hooks copy them (copy_exec) from the tree; usr/bin also holds the artifacts' binaries.
INITRAMFS_PATHS = ("etc/initramfs-tools", "usr/share/initramfs-tools", "etc/modprobe.d", "usr/lib/modprobe.d",
                   "etc/udev", "usr/lib/udev", "etc/systemd/network", "usr/lib/systemd/network",
                   "usr/lib/systemd/systemd-udevd", "usr/lib/modules", "usr/lib/firmware", "boot",
                   "etc/crypttab", "etc/fstab.d", "etc/ld.so.conf", "etc/ld.so.conf.d", "etc/default/keyboard",
                   "etc/console-setup", "etc/kernel", "usr/bin", "usr/sbin", "usr/lib/x86_64-linux-gnu",
                   "usr/lib64", "usr/lib/klibc", "usr/lib/initramfs-tools")
# the payload's code that writes the driver hook (provision) and the list of drivers it names
INITRAMFS_PAYLOAD_CODE = ("usr/lib/ca-appliance/ca_appliance/provision.py",
                          "usr/lib/ca-appliance/initramfs-drivers.txt")
MERGED_USR = ("bin", "sbin", "lib", "lib64")   # symlinks into /usr on a merged-/usr Debian


def tree_path(member: str) -> str:
    """A payload member's path in the tree: no ./, and /bin, /sbin, /lib, /lib64 as the /usr they link to."""
    name = member.removeprefix("./").strip("/")
    return f"usr/{name}" if name.split("/", 1)[0] in MERGED_USR else name


def payload_members(payload: Path) -> dict[str, str]:
    """{path in the tree: type, mode, owner, link target and content digest} of every payload member."""
    members = {}
    with tarfile.open(payload) as tar:
        for member in tar:
            digest = ""
            if member.isfile():
                digest = hashlib.sha256(tar.extractfile(member).read()).hexdigest()
            members[tree_path(member.name)] = (f"{member.type.decode()}:{member.mode:o}:{member.uid}:{member.gid}:"
                                               f"{member.linkname}:{digest}")
    return members


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root + "/") for root in roots)


def fstype_pinned(rootfs: Path) -> bool:
    """Whether an initramfs-tools conf.d file sets FSTYPE: then the fsck hook never reads /etc/fstab
    (which names the root UUID), so the fstab is no input of the initramfs."""
    conf_d = rootfs / "etc/initramfs-tools/conf.d"
    for conf in sorted(conf_d.glob("*")) if conf_d.is_dir() else ():
        if conf.is_file() and re.search(r"^\s*FSTYPE=(?!auto\b)\S", conf.read_text(errors="replace"), re.M):
            return True
    return False


def kernel_source_date(rootfs: Path) -> int:
    """SOURCE_DATE_EPOCH for mkinitramfs: the kernel image's mtime (its package's date, in the base
    tree): the initramfs is then reproducible (no build-time stamps) and independent of the payload."""
    return int((rootfs / "boot" / f"vmlinuz-{kernel_version(rootfs)}").stat().st_mtime)


def initramfs_inputs(base_key: str, rootfs: Path, payload: Path, artifacts: list) -> dict:
    """Everything the initramfs is made from, once the payload, base files, binaries and boot
    configuration are laid: the base tree (by its key: kernel, modules, initramfs-tools, every
    package file), the payload's files where mkinitramfs and its hooks read, the code that writes
    the driver hook and its driver list, the base's own files, the binaries, the fstab when the fsck
    hook reads it, and the SOURCE_DATE_EPOCH it is stamped with."""
    members = payload_members(payload)
    return {"initramfs": INITRAMFS_FORMAT, "base_tree": base_key,
            "payload": {path: rec for path, rec in members.items() if _under(path, INITRAMFS_PATHS)},
            "provision_code": {path: members.get(path) for path in INITRAMFS_PAYLOAD_CODE},
            "base_files": digest_files(FILES_DIR),
            "binaries": {art.name: sha256_file(Path(art.path)) for art in artifacts if art.kind == "binary"},
            "fstab": None if fstype_pinned(rootfs) else (rootfs / "etc/fstab").read_text(),
            "conf": (rootfs / UPDATE_INITRAMFS_CONF).read_text(),
            "source_date_epoch": kernel_source_date(rootfs)}


def initramfs_cache() -> TreeCache:
    """Beside the base trees (`invoke clean --cache` removes both)."""
    return TreeCache(trees_dir() / "initramfs")


def initramfs_files(rootfs: Path) -> list[str]:
    """The initramfs images update-initramfs -k all writes (one per kernel), relative to the tree."""
    return sorted(str(p.relative_to(rootfs)) for p in (rootfs / "boot").glob("initrd.img-*"))


def initramfs_conf_override(rootfs: Path, workdir: Path, *, cached: bool) -> Path:
    """The tree's update-initramfs.conf plus what this run needs: with the initramfs from the cache,
    update_initramfs=no (provision's `update-initramfs -u` then changes nothing); else
    SOURCE_DATE_EPOCH, so the image is reproducible and the cache entry equals a cold build's."""
    text = (rootfs / UPDATE_INITRAMFS_CONF).read_text()
    if not text.endswith("\n"):
        text += "\n"
    if cached:
        text += "# the build: this tree's initramfs came from the initramfs cache\nupdate_initramfs=no\n"
    else:
        text += (f"# the build: a reproducible initramfs\nSOURCE_DATE_EPOCH={kernel_source_date(rootfs)}\n"
                 "export SOURCE_DATE_EPOCH\n")
    override = workdir / "update-initramfs.conf"
    override.write_text(text)
    os.chmod(override, 0o644)
    return override


def pack_initramfs(rootfs: Path, tarball: Path, runner: Runner) -> None:
    files = initramfs_files(rootfs)
    if not files:
        raise StepFailed("debian: configure", "provision left no /boot/initrd.img-* to cache")
    runner.run(["tar", "--create", "--file", str(tarball), "--use-compress-program=zstd -T0 -1 -q",
                *TAR_OPTIONS, "-C", str(rootfs), *files])


def restore_initramfs(tarball: Path, rootfs: Path, runner: Runner) -> bool:
    """The cached initramfs images into the tree (replacing the base tree's); False when the entry
    does not hold exactly the images this tree's kernels need (nothing is changed then)."""
    listed = runner.output(["tar", "--list", "--file", str(tarball), "--use-compress-program=zstd -q"])
    if sorted(name.removeprefix("./") for name in listed.split()) != initramfs_files(rootfs):
        return False
    runner.run(["tar", "--extract", "--file", str(tarball), "--use-compress-program=zstd -q",
                *TAR_OPTIONS, "--same-permissions", "-C", str(rootfs)])
    return True


def kernel_version(rootfs: Path) -> str:
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1 or not (rootfs / "boot" / kernels[0].name.replace("vmlinuz", "initrd.img")).exists():
        raise StepFailed("debian: configure", f"expected one kernel and its initrd in /boot, found "
                         f"{[k.name for k in kernels]}")
    return kernels[0].name.removeprefix("vmlinuz-")


def write_boot_config(cfg: Config, rootfs: Path, root_uuid: str) -> None:
    """fstab and grub.cfg by file system UUID (no grub-mkconfig: it probes devices a chroot lacks)."""
    _write(rootfs / "etc/fstab", fstab_text(root_uuid))
    _write(rootfs / "etc/hostname", f"{cfg.image.name}\n")
    # minbase ships no /etc/hosts; setup adds the appliance's own name (127.0.1.1) at first boot
    _write(rootfs / "etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{cfg.image.name}\n"
                                 "::1\tlocalhost ip6-localhost ip6-loopback\n")
    kver = kernel_version(rootfs)
    (rootfs / "boot/grub").mkdir(parents=True, exist_ok=True)
    _write(rootfs / "boot/grub/grub.cfg", f"""\
# Written by the appliance build; update-grub replaces it after a kernel upgrade
# (/etc/default/grub.d/ca-appliance.cfg keeps the consoles then).
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
set timeout=2
set default=0
insmod part_gpt
insmod ext2
search --no-floppy --fs-uuid --set=root {root_uuid}
menuentry '{cfg.image.name} {cfg.image.version} (Debian {cfg.debian.suite})' {{
    linux /boot/vmlinuz-{kver} root=UUID={root_uuid} {KERNEL_CMDLINE}
    initrd /boot/initrd.img-{kver}
}}
""")


def installed_packages(rootfs: Path, runner: Runner) -> list[str]:
    out = runner.output(["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "--show",
                         "--showformat=${Package} ${Version}\\n"])
    return sorted(line for line in out.splitlines() if line.strip())


def release_name(cfg: Config, rootfs: Path) -> str:
    version = (rootfs / "etc/debian_version").read_text().strip()
    return f"Debian {version} ({cfg.debian.suite})"


# The base's own files that go in while bootstrapping (essential hooks, before the initramfs is built)
BOOTSTRAP_FILES = ("etc/initramfs-tools", "etc/modprobe.d")


def base_tree_inputs(cfg: Config, debs: list[Path], mmdebstrap_version: str) -> dict:
    """Everything that shapes the bootstrapped tree, for its cache key: the mmdebstrap command
    (suite, mirror, packages, dpkg excludes, hook text) with this machine's paths replaced by names,
    the local .debs' and bootstrap files' digests, the slimming rules and mmdebstrap's version."""
    paths = {str(apt_cache_dir(cfg)): "@apt-cache", str(FILES_DIR): "@base-files", str(SLIM_DIR): "@slim"}
    paths.update({str(deb): f"@deb/{deb.name}" for deb in debs})

    def neutral(arg: str) -> str:
        for real, name in sorted(paths.items(), key=lambda kv: -len(kv[0])):
            arg = arg.replace(real, name)
        return arg

    command = mmdebstrap_command(cfg, Path("/@rootfs"), debs, Path("/@used-debs"))
    return {"base": "debian", "suite": cfg.debian.suite, "mirror": cfg.debian.mirror,
            "packages": list(PACKAGES), "dpkg_excludes": list(DPKG_EXCLUDES),
            "command": [neutral(a) for a in command],
            "debs": {deb.name: sha256_file(deb) for deb in debs},
            "files": digest_files(FILES_DIR, BOOTSTRAP_FILES),
            "drivers": sha256_file(DRIVER_LIST),   # slimming keeps these: a new one needs a new tree
            "slim": slim_rules(), "mmdebstrap": mmdebstrap_version}


TAR_COMPRESSOR = "zstd -T0 -3 -q"
TAR_OPTIONS = ("--xattrs", "--xattrs-include=*", "--numeric-owner")


def pack_tree(rootfs: Path, tarball: Path, runner: Runner) -> None:
    runner.run(["tar", "--create", "--file", str(tarball), f"--use-compress-program={TAR_COMPRESSOR}",
                *TAR_OPTIONS, "-C", str(rootfs), "."])


def unpack_tree(tarball: Path, rootfs: Path, runner: Runner) -> None:
    rootfs.mkdir(parents=True, exist_ok=True)   # empty (or an empty work tree: make_work_tree)
    runner.run(["tar", "--extract", "--file", str(tarball), f"--use-compress-program={TAR_COMPRESSOR}",
                *TAR_OPTIONS, "--same-permissions", "-C", str(rootfs)])


# The work tree lives in RAM (tmpfs) when the machine has it to spare: creating a file cost 0.6 ms on
# the build host's ext4 under load and 13,500 of them made the cached tree's unpacking 8 s of sys
# time; in tmpfs the whole unpack takes about a second. Bootstrapping holds at most ~1.3 GB there
# (the tree and the .debs it installs); with less memory available the tree is a plain directory.
TMPFS_MIN_AVAILABLE = 4 << 30


def mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def make_work_tree(rootfs: Path, runner: Runner) -> bool:
    """An empty rootfs directory: a tmpfs mounted there when memory allows (True), else on disk.
    remove_tree unmounts it, on success and after a failure alike."""
    rootfs.mkdir(parents=True)
    if mem_available() < TMPFS_MIN_AVAILABLE:
        return False
    runner.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "ca-appliance-tree", str(rootfs)])
    return True


def drop_work_tree(rootfs: Path, runner: Runner) -> None:
    """The work tree gone: its tmpfs unmounted (so remove_tree does not report it as left over)."""
    if os.path.ismount(rootfs):
        unmount(rootfs, runner)
    remove_tree(rootfs, runner)


def bootstrap_rootfs(cfg: Config, rootfs: Path, debs: list[Path], workdir: Path, runner: Runner,
                     use_cache: bool = True) -> str:
    """The bootstrapped, slimmed tree in rootfs: from the base-tree cache when an entry matches
    (and use_cache), else by mmdebstrap, then stored. Returns the tree's cache key."""
    remove_tree(rootfs, runner)   # mmdebstrap wants an empty target
    version = runner.output(["mmdebstrap", "--version"]).strip()
    inputs = base_tree_inputs(cfg, debs, version)
    key = cache_key(inputs)
    cache = TreeCache()
    in_ram = make_work_tree(rootfs, runner)
    runner.say("    work tree in RAM (tmpfs)" if in_ram else "    work tree on disk (less than "
               f"{TMPFS_MIN_AVAILABLE >> 30} GiB of memory available)")
    if use_cache:
        # unpacked while its digest is checked on the other core; used only once that matched
        unpacked: list[bool] = []

        def unpack(tarball: Path) -> None:
            unpacked.append(True)
            unpack_tree(tarball, rootfs, runner)
        try:
            if cache.use(key, unpack):
                runner.say(f"    base tree from the cache ({key[:12]}; `invoke build --no-cache` bootstraps afresh)")
                return key
            if unpacked:
                runner.say("    cached base tree failed its digest check (deleted): bootstrapping afresh")
        except StepFailed:
            runner.say("    cached base tree could not be unpacked: bootstrapping afresh")
        if unpacked:
            drop_work_tree(rootfs, runner)
            make_work_tree(rootfs, runner)
    used_debs_list = workdir / "debs-used.txt"
    with echo_progress(runner):
        runner.run(mmdebstrap_command(cfg, rootfs, debs, used_debs_list))
    prune_apt_cache(cfg, used_debs_list)
    check_required_modules(rootfs)
    cache.store(key, lambda path: pack_tree(rootfs, path, runner), inputs)
    return key


def lay_payload(rootfs: Path, payload: Path, runner: Runner) -> None:
    # --keep-directory-symlink: /lib, /bin, /sbin are symlinks on merged-/usr Debian; keep them so
    runner.run(["tar", "-C", str(rootfs), "--extract", "--gzip", "--file", str(payload),
                "--numeric-owner", "--same-permissions", "--keep-directory-symlink", "--no-overwrite-dir"])


def configure_rootfs(cfg: Config, rootfs: Path, payload: Path, artifacts: list, root_uuid: str,
                     runner: Runner, *, base_key: str, workdir: Path, use_cache: bool = True) -> bool:
    """Everything after the packages: the payload and artifacts laid in, the boot configuration,
    then the guest's `ca-appliance provision --base debian` in the rootfs does the rest; its
    initramfs comes from the initramfs cache when an entry matches (and use_cache), else it is made
    and stored. True when the initramfs came from the cache."""
    lay_payload(rootfs, payload, runner)
    lay_base_files(rootfs)
    install_binaries(rootfs, artifacts)
    write_boot_config(cfg, rootfs, root_uuid)
    inputs = initramfs_inputs(base_key, rootfs, payload, artifacts)
    key = cache_key(inputs)
    cache = initramfs_cache()
    cached = False
    if use_cache:
        # a restored image whose entry then fails its digest check is made afresh below (update-initramfs
        # -u -k all rewrites every image the entry could hold: restore_initramfs takes only those)
        restored: list[bool] = []
        try:
            verified = cache.use(key, lambda tarball: restored.append(restore_initramfs(tarball, rootfs, runner)))
        except StepFailed:
            verified = False
            runner.say("    cached initramfs could not be unpacked: making it afresh")
        cached = verified and restored == [True]
    if cached:
        runner.say(f"    initramfs from the cache ({key[:12]}; `invoke build --no-cache` makes it afresh)")
    override = initramfs_conf_override(rootfs, workdir, cached=cached)
    runner.say("    chroot: ca-appliance provision --base debian"
               + (" (its update-initramfs skipped: the cached initramfs is in place)" if cached else ""))
    runner.run(provision_command(rootfs, override))
    override.unlink()
    if not cached:
        cache.store(key, lambda path: pack_initramfs(rootfs, path, runner), inputs)
    return cached


def root_fs_uuid(base_key: str, cfg: Config, payload: Path, artifacts: list) -> str:
    """The root file system's UUID, derived from everything the image is made of (the base tree, the
    config, the payload, the artifacts): the same inputs give the same tree, /etc/fstab and grub.cfg
    included, and two different images never share it."""
    inputs = {"base_tree": base_key, "config": cfg.digest(), "payload": sha256_file(payload),
              "artifacts": sorted(f"{a.name}:{sha256_file(Path(a.path))}" for a in artifacts)}
    return str(uuidlib.uuid5(ROOT_UUID_NAMESPACE, cache_key(inputs)))


ROOT_UUID_NAMESPACE = uuidlib.UUID("6d1f8a52-3c1e-5b7e-9a41-ca0a991a7ce0")


def build_raw(cfg: Config, *, workdir: Path, runner: Runner, artifacts: list, payload: Path,
              use_cache: bool = True) -> BaseResult:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rootfs = workdir / "rootfs"
    debs = check_artifact_kinds(artifacts)
    with runner.step(f"debian: bootstrap {cfg.debian.suite} rootfs (mmdebstrap, or the base-tree cache)"):
        base_key = bootstrap_rootfs(cfg, rootfs, debs, workdir, runner, use_cache=use_cache)
    root_uuid = root_fs_uuid(base_key, cfg, payload, artifacts)
    with runner.step("debian: configure rootfs (payload, artifacts; chroot: ca-appliance provision --base debian)"):
        configure_rootfs(cfg, rootfs, payload, artifacts, root_uuid, runner, base_key=base_key, workdir=workdir,
                         use_cache=use_cache)
        packages = installed_packages(rootfs, runner)
        release = release_name(cfg, rootfs)
    raw = workdir / "disk.raw"
    with runner.step(f"debian: assemble the {cfg.image.disk_gb} GiB disk (GPT, ext4 from the rootfs, "
                     "GRUB for BIOS and UEFI)"):
        layout = create_disk(raw, cfg.image.disk_gb << 30, runner)
        make_ext4_from_dir(raw, layout.root, rootfs, uuid=root_uuid, label=ROOT_LABEL, runner=runner)
        install_grub(raw, layout, workdir, runner)
        drop_work_tree(rootfs, runner)   # the disk holds it now; a gigabyte less in build/ (or RAM)
    return BaseResult(raw=raw, release=release, packages=packages)
