"""The Debian base: a minimal Debian rootfs from mmdebstrap, made into a raw disk that boots BIOS and UEFI.

Suites: trixie (Debian 13, the default) and bookworm (Debian 12); the package set, unit names and
paths are the same in both, and the one difference the appliance must undo (Debian 13's
openssh-server enables sshd-keygen.service) is a row of the guest's DISTROS table.

Offline-capable (any Debian mirror, file:// included) and needs no VM: the rootfs is
bootstrapped into a directory, the payload and artifacts laid in, then the guest's own
`ca-appliance provision --base debian` run inside it through chroot (users, units, initramfs,
generalisation: the code the Fedora kickstart runs too), then turned into the disk's ext4 file
system without mounting it (image.disk).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import threading
import uuid as uuidlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from image.bases import BaseResult
from image.cache import TreeCache, cache_dir, cache_key, digest_files
from image.config import PROJECT_ROOT, Config
from image.disk import create_disk, install_grub, make_ext4_from_dir, remove_tree
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
KERNEL_CMDLINE = "ro console=tty0 console=ttyS0,115200n8"


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
# mounts end with the process, so a failed or interrupted provision leaves none behind.
PROVISION_SCRIPT = """set -eu
root="$1"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \\
    /usr/bin/ca-appliance provision --base debian
"""


def provision_command(rootfs: Path) -> list[str]:
    """The guest's own provisioning (users, units, initramfs, generalisation) run inside the rootfs:
    the same program the Fedora kickstart's %post runs."""
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", PROVISION_SCRIPT,
            "provision", str(rootfs)]


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
    rootfs.mkdir(parents=True)
    runner.run(["tar", "--extract", "--file", str(tarball), f"--use-compress-program={TAR_COMPRESSOR}",
                *TAR_OPTIONS, "--same-permissions", "-C", str(rootfs)])


def bootstrap_rootfs(cfg: Config, rootfs: Path, debs: list[Path], workdir: Path, runner: Runner,
                     use_cache: bool = True) -> bool:
    """The bootstrapped, slimmed tree in rootfs: from the base-tree cache when an entry matches
    (and use_cache), else by mmdebstrap, then stored. True when it came from the cache."""
    remove_tree(rootfs, runner)   # mmdebstrap wants an empty target
    version = runner.output(["mmdebstrap", "--version"]).strip()
    inputs = base_tree_inputs(cfg, debs, version)
    key = cache_key(inputs)
    cache = TreeCache()
    tarball = cache.lookup(key) if use_cache else None
    if tarball is not None:
        runner.say(f"    base tree from the cache ({key[:12]}; `invoke build --no-cache` bootstraps afresh)")
        try:
            unpack_tree(tarball, rootfs, runner)
            return True
        except StepFailed:
            runner.say("    cached base tree could not be unpacked: bootstrapping afresh")
            remove_tree(rootfs, runner)
    used_debs_list = workdir / "debs-used.txt"
    with echo_progress(runner):
        runner.run(mmdebstrap_command(cfg, rootfs, debs, used_debs_list))
    prune_apt_cache(cfg, used_debs_list)
    check_required_modules(rootfs)
    cache.store(key, lambda path: pack_tree(rootfs, path, runner), inputs)
    return False


def lay_payload(rootfs: Path, payload: Path, runner: Runner) -> None:
    # --keep-directory-symlink: /lib, /bin, /sbin are symlinks on merged-/usr Debian; keep them so
    runner.run(["tar", "-C", str(rootfs), "--extract", "--gzip", "--file", str(payload),
                "--numeric-owner", "--same-permissions", "--keep-directory-symlink", "--no-overwrite-dir"])


def configure_rootfs(cfg: Config, rootfs: Path, payload: Path, artifacts: list, root_uuid: str,
                     runner: Runner) -> None:
    """Everything after the packages: the payload and artifacts laid in, the boot configuration,
    then the guest's `ca-appliance provision --base debian` in the rootfs does the rest."""
    lay_payload(rootfs, payload, runner)
    lay_base_files(rootfs)
    install_binaries(rootfs, artifacts)
    write_boot_config(cfg, rootfs, root_uuid)
    runner.say("    chroot: ca-appliance provision --base debian")
    runner.run(provision_command(rootfs))


def build_raw(cfg: Config, *, workdir: Path, runner: Runner, artifacts: list, payload: Path,
              use_cache: bool = True) -> BaseResult:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rootfs = workdir / "rootfs"
    debs = check_artifact_kinds(artifacts)
    root_uuid = str(uuidlib.uuid4())
    with runner.step(f"debian: bootstrap {cfg.debian.suite} rootfs (mmdebstrap, or the base-tree cache)"):
        bootstrap_rootfs(cfg, rootfs, debs, workdir, runner, use_cache=use_cache)
    with runner.step("debian: configure rootfs (payload, artifacts; chroot: ca-appliance provision --base debian)"):
        configure_rootfs(cfg, rootfs, payload, artifacts, root_uuid, runner)
        packages = installed_packages(rootfs, runner)
        release = release_name(cfg, rootfs)
    raw = workdir / "disk.raw"
    with runner.step(f"debian: assemble the {cfg.image.disk_gb} GiB disk (GPT, ext4 from the rootfs, "
                     "GRUB for BIOS and UEFI)"):
        layout = create_disk(raw, cfg.image.disk_gb << 30, runner)
        make_ext4_from_dir(raw, layout.root, rootfs, uuid=root_uuid, label=ROOT_LABEL, runner=runner)
        install_grub(raw, layout, workdir, runner)
        remove_tree(rootfs, runner)   # the disk holds it now; a gigabyte less in build/
    return BaseResult(raw=raw, release=release, packages=packages)
