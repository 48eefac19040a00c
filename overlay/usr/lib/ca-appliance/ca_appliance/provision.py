"""`ca-appliance provision --base debian|fedora`: everything that makes an installed tree the appliance.

Run once at build time INSIDE the target root, after the packages and the payload are in: by the
Debian build through chroot, by the Fedora kickstart's chrooted %post. The same code does, on both
bases: the `step` system user (sysusers), the admin with SSH keys and sudoers, root locked, units
enabled, a firewall zone with SSH and the CA's port only, initramfs drivers of every import target,
SELinux labels where the base has them, and generalisation (nothing unique to one appliance stays).
What differs between the distributions is the one table DISTROS below.

The builder's facts come through files, never the command line: build.json (public) and
/etc/ca-appliance/provision.json (0600; holds the admin's password hash; removed once applied).

Tests run it on a directory with `--root DIR`: commands that know a root option get it, the others
run through chroot, and the tools a test tree cannot have (dracut, restorecon, ...) are recorded to a
file instead with `--stand-in TOOL --record FILE` (refused without --root: a real build never skips).
"""
import compileall
import json
import os
import py_compile
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from . import sshd
from .errors import StepFailed, UserError

PROVISION_INPUT = "etc/ca-appliance/provision.json"
BUILD_INFO = "usr/lib/ca-appliance/build.json"
SUDOERS_FILE = "etc/sudoers.d/ca-appliance-admin"
FIREWALL_ZONE = "ca-appliance"
STEP_HOME = "var/lib/step-ca"
STEP_SYSUSERS = "step-ca.conf"          # overlay/usr/lib/sysusers.d/step-ca.conf
UNIT_DIRS = ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system")

# Storage and network drivers of every import target, in the initramfs on both bases: QEMU/KVM
# (virtio), VMware (LSI Logic SPI/SAS, PVSCSI, BusLogic-era sym53c8xx, e1000/e1000e, vmxnet3),
# VirtualBox and most others (AHCI, PIIX IDE), Hyper-V (storvsc, netvsc), and a MegaRAID SAS HBA.
# One list for both bases and for the build's slimming check (a data file the host reads too).
DRIVER_LIST = Path(__file__).resolve().parent.parent / "initramfs-drivers.txt"


def _read_driver_list(path=DRIVER_LIST):
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return tuple(line for line in lines if line)


INITRAMFS_DRIVERS = _read_driver_list()


@dataclass(frozen=True)
class Distro:
    os_ids: tuple          # /etc/os-release ID (or ID_LIKE) values the base accepts
    sudo_group: str        # the group whose members the distribution's sudoers lets in
    initramfs_tool: str    # "initramfs-tools" | "dracut"
    initramfs_config: str  # the file naming our drivers
    initramfs_command: tuple
    relabel: bool          # SELinux: restorecon what provisioning wrote
    package_tool: str      # whose caches generalisation empties
    package_caches: tuple  # globs under the root, emptied (files only)
    units: tuple           # the distribution's units the appliance needs enabled
    disable_units: tuple   # enabled by the distribution, not wanted (when present)
    mask_units: tuple      # never to run (when present)
    leftovers: tuple       # globs under the root: build-time files and directories that must not ship
    boot_entries: str = ""  # Boot Loader Specification entries named <machine-id>-<kernel>.conf ("": none)
    grubenv: str = ""       # GRUB's environment block, whose saved_entry names one of them


# e2scrub checks ext4 on LVM only (the root is a plain partition), yet its boot-time reaper took
# minutes of an emulated first boot (systemd-analyze blame): masked where e2fsprogs ships it
E2SCRUB_UNITS = ("e2scrub_reap.service", "e2scrub_all.timer", "e2scrub_all.service")
# Debian 13's openssh-server enables it: `ssh-keygen -A` on the first boot makes an RSA key too (the
# minutes ca-appliance-ssh-hostkeys.service avoids) and races that unit for the Ed25519 key
DEBIAN_SSH_KEYGEN = ("sshd-keygen.service",)

DISTROS = {
    "debian": Distro(
        os_ids=("debian",), sudo_group="sudo",
        initramfs_tool="initramfs-tools",
        initramfs_config="etc/initramfs-tools/hooks/ca-appliance-drivers",
        initramfs_command=("update-initramfs", "-u", "-k", "all"),
        relabel=False,
        package_tool="apt",
        package_caches=("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"),
        units=("NetworkManager.service", "firewalld.service", "ssh.service", "chrony.service",
               "open-vm-tools.service", "serial-getty@ttyS0.service"),
        disable_units=(),
        mask_units=E2SCRUB_UNITS + DEBIAN_SSH_KEYGEN,
        # the chroot's resolv.conf is the build host's
        leftovers=("etc/resolv.conf",),
    ),
    "fedora": Distro(
        os_ids=("fedora",), sudo_group="wheel",
        initramfs_tool="dracut",
        initramfs_config="etc/dracut.conf.d/90-ca-appliance-drivers.conf",
        initramfs_command=("dracut", "--force", "--regenerate-all"),
        relabel=True,
        package_tool="dnf",
        package_caches=("var/cache/dnf/*", "var/cache/libdnf5/*"),
        units=("NetworkManager.service", "firewalld.service", "sshd.service", "chronyd.service",
               "qemu-guest-agent.service", "vmtoolsd.service"),
        # Fedora Server's web console: the appliance opens SSH and the CA's port, nothing else
        disable_units=("cockpit.socket",),
        mask_units=E2SCRUB_UNITS,
        # Anaconda's: the installer NIC's connection profile (same ID in every copy; the wizard makes
        # its own), the kickstarts and logs that name the build (inst.nosave=all keeps most out; these
        # catch what is written before %post), and its chrooted %post scripts (never deleted by it)
        leftovers=("etc/NetworkManager/system-connections/*.nmconnection", "root/anaconda-ks.cfg",
                   "root/original-ks.cfg", "root/anaconda-tb-*", "var/log/anaconda", "tmp/ks-script-*"),
        boot_entries="boot/loader/entries",
        grubenv="boot/grub2/grubenv",
    ),
}
# What the boot entries are named by instead of the installer's machine ID: the ID Fedora's own
# osbuild-made images carry (its rpm stage installs the kernel under it). /etc/machine-info tells
# kernel-install to keep using it, so a later kernel update finds and removes these entries.
NEUTRAL_ENTRY_ID = "f" * 32
MACHINE_INFO = "etc/machine-info"
# Generalisation, both bases: each appliance makes its own at first boot.
MACHINE_SECRETS = ("var/lib/systemd/random-seed", "var/lib/systemd/credential.secret")
# What the relabel covers: everything provisioning and the payload wrote.
RELABEL_PATHS = ("etc", "home", "var/lib/step-ca", "usr/lib/ca-appliance", "usr/libexec/ca-appliance",
                 "usr/bin/ca-appliance", "usr/bin/step-ca", "usr/lib/systemd/system", "usr/lib/sysusers.d",
                 "usr/lib/firewalld", "boot")

ZONE_XML = """<?xml version="1.0" encoding="utf-8"?>
<!-- The appliance's default zone (ca-appliance provision): SSH and the CA's port (the step-ca
     service; setup writes its port), nothing else. dhcpv6-client only lets the answers to the
     appliance's own DHCPv6 requests in: no service listens there. -->
<zone>
  <short>CA appliance</short>
  <description>SSH and the certificate authority, nothing else.</description>
  <service name="ssh"/>
  <service name="step-ca"/>
  <service name="dhcpv6-client"/>
</zone>
"""


class Tools:
    """Runs the system tools provisioning needs, in the target root.

    root "/": as they are (provision already runs inside the target). Another root: a command with
    a root option is given it (`rooted`), any other runs through chroot, and a stand-in tool is only
    written to the record file: a test tree has no dracut or SELinux policy to run.
    """

    def __init__(self, root, stand_ins=(), record=None, out=sys.stdout):
        self.root = Path(root)
        self.stand_ins = set(stand_ins)
        self.record = Path(record) if record else None
        self.out = out

    @property
    def in_target(self):
        return self.root == Path("/")

    def path(self, relative):
        return self.root / str(relative).lstrip("/")

    def run(self, step, argv, *, rooted=None, input=None):
        argv = [str(a) for a in argv]
        if not self.in_target:
            if argv[0] in self.stand_ins:
                with open(self.record, "a", encoding="utf-8") as f:
                    f.write(shlex.join(argv) + "\n")
                print(f"    {step}: recorded, not run (stand-in): {shlex.join(argv)}", file=self.out, flush=True)
                return ""
            argv = [str(a) for a in rooted] if rooted is not None else ["chroot", str(self.root), *argv]
        try:
            result = subprocess.run(argv, input=input, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
        except FileNotFoundError:
            raise StepFailed(step, f"{argv[0]} is not installed") from None
        if result.returncode != 0:
            said = " ".join(result.stdout.split())[-300:]
            raise StepFailed(step, f"`{shlex.join(argv)}` exited {result.returncode}: {said}")
        return result.stdout


# --- the builder's facts


def read_json(path, what):
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"provision: {what} {path} is missing (the build's payload writes it)") from None
    except (OSError, ValueError) as error:
        raise UserError(f"provision: {what} {path} cannot be read ({error.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"provision: {what} {path} is not a JSON object")
    return data


USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def read_inputs(tools):
    """(admin user, keys, password hash or None, step_cli wanted) from provision.json, checked."""
    data = read_json(tools.path(PROVISION_INPUT), "input")
    admin = data.get("admin") or {}
    user = admin.get("user")
    if not isinstance(user, str) or not USER_NAME.fullmatch(user):
        raise UserError(f"provision: admin.user {user!r} in {PROVISION_INPUT} is not a user name "
                        "(lower case letters, digits, _ and -)")
    keys = admin.get("ssh_authorized_keys") or []
    if not isinstance(keys, list) or not all(isinstance(k, str) and k and "\n" not in k for k in keys):
        raise UserError(f"provision: admin.ssh_authorized_keys in {PROVISION_INPUT} must be a list of one-line keys")
    password_hash = admin.get("password_hash") or None
    if password_hash is not None and (not isinstance(password_hash, str) or ":" in password_hash
                                      or "\n" in password_hash or not password_hash.startswith("$")):
        # the value is never shown: it is a credential
        raise UserError(f"provision: admin.password_hash in {PROVISION_INPUT} is not a crypt(3) hash")
    return user, keys, password_hash, bool(data.get("step_cli", False))


UNIT_NAME = re.compile(r"[A-Za-z0-9@_.:-]+\.(service|timer|socket|path)")


def read_extra_units(tools):
    """Distribution units the build asks for besides the base's table (e.g. updates.security's timers)."""
    units = read_json(tools.path(PROVISION_INPUT), "input").get("extra_units") or []
    if not isinstance(units, list) or not all(isinstance(u, str) and UNIT_NAME.fullmatch(u) for u in units):
        raise UserError(f"provision: extra_units in {PROVISION_INPUT} must be a list of unit names")
    return units


def check_base(tools, base):
    """Provisioning the wrong tree (the build host, another distribution) is refused before any change."""
    os_release = tools.path("etc/os-release")
    if not os_release.exists():
        os_release = tools.path("usr/lib/os-release")
    fields = {}
    if os_release.exists():
        for line in os_release.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition("=")
            fields[key.strip()] = value.strip().strip('"')
    ids = {fields.get("ID", "")} | set(fields.get("ID_LIKE", "").split())
    if not ids & set(DISTROS[base].os_ids):
        found = f"is {fields['ID']}" if fields.get("ID") else "has no os-release"
        raise UserError(f"provision: --base {base}: {tools.root} {found}, not {' or '.join(DISTROS[base].os_ids)}")


# --- users


def passwd_entry(tools, name):
    try:
        text = tools.path("etc/passwd").read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) == 7 and fields[0] == name:
            return fields
    return None


def group_exists(tools, name):
    try:
        return any(line.split(":")[0] == name for line in tools.path("etc/group").read_text().splitlines())
    except OSError:
        return False


def create_step_user(tools):
    """`step`, the user step-ca runs as, from the payload's sysusers.d entry (as systemd would at boot)."""
    tools.run("step user", ["systemd-sysusers", STEP_SYSUSERS],
              rooted=["systemd-sysusers", f"--root={tools.root}", STEP_SYSUSERS])
    entry = passwd_entry(tools, "step")
    if entry is None:
        raise StepFailed("step user", f"systemd-sysusers {STEP_SYSUSERS} made no user step")
    home = tools.path(STEP_HOME)
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, int(entry[2]), int(entry[3]))
    os.chmod(home, 0o750)


def sudoers_text(user, password_hash):
    # without a password sudo could never be used: the SSH key is the admin's only credential then
    rule = "ALL=(ALL:ALL) ALL" if password_hash else "ALL=(ALL:ALL) NOPASSWD: ALL"
    return f"# the appliance's admin (admin.user in the build config)\n{user} {rule}\n"


def create_admin(tools, distro, user, keys, password_hash):
    """The admin: in the distribution's sudo group, its keys, its sudoers rule (checked by visudo)."""
    group = distro.sudo_group
    if not group_exists(tools, group):
        raise StepFailed("admin user", f"group {group} (the sudo group of this base) does not exist")
    if passwd_entry(tools, user) is None:
        args = ["--create-home", "--user-group", "--groups", group, "--shell", "/bin/bash", user]
        tools.run("admin user", ["useradd", *args], rooted=["useradd", "--root", tools.root, *args])
    else:
        args = ["--append", "--groups", group, user]
        tools.run("admin user", ["usermod", *args], rooted=["usermod", "--root", tools.root, *args])
    if password_hash:
        # the hash goes on stdin: never on a command line, in a log or an error
        tools.run("admin password", ["chpasswd", "--encrypted"],
                  rooted=["chpasswd", "--root", tools.root, "--encrypted"], input=f"{user}:{password_hash}\n")
    entry = passwd_entry(tools, user)
    uid, gid, home = int(entry[2]), int(entry[3]), entry[5]
    ssh_dir = tools.path(home) / ".ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True)
    authorized = ssh_dir / "authorized_keys"
    authorized.write_text("".join(k + "\n" for k in keys), encoding="utf-8")
    for path, mode in ((ssh_dir, 0o700), (authorized, 0o600)):
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    sudoers = tools.path(SUDOERS_FILE)
    sudoers.parent.mkdir(parents=True, exist_ok=True)
    sudoers.write_text(sudoers_text(user, password_hash), encoding="utf-8")
    os.chmod(sudoers, 0o440)
    # inside the target the whole configuration is checked; a test tree's own file only
    tools.run("sudoers", ["visudo", "-c"], rooted=["visudo", "-c", "-f", sudoers])


def write_sshd_dropin(tools, user):
    """sshd is key-only from the first boot: not the distribution's defaults until setup runs."""
    path = tools.path(sshd.DROPIN)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.write_text(sshd.dropin_text(user, written_by="ca-appliance provision (setup writes it again)"))
    path.chmod(0o644)


def lock_root(tools):
    tools.run("lock root", ["usermod", "--lock", "root"], rooted=["usermod", "--root", tools.root, "--lock", "root"])


# --- units and firewall


def unit_exists(tools, unit):
    template = re.sub(r"@[^.]+\.", "@.", unit)
    return any(tools.path(d).joinpath(name).exists() for d in UNIT_DIRS for name in (unit, template))


def payload_units(tools):
    """Every unit in /etc/systemd/system with an [Install] section (the payload's; the distribution
    puts only symlinks there): whoever adds a unit to the overlay gets it enabled, no table to edit."""
    found = []
    directory = tools.path("etc/systemd/system")
    for path in sorted(directory.glob("*")) if directory.is_dir() else ():
        if path.suffix not in (".service", ".timer", ".socket", ".path") or path.is_symlink() or not path.is_file():
            continue
        if re.search(r"^\[Install\]\s*$", path.read_text(encoding="utf-8", errors="replace"), re.M):
            found.append(path.name)
    return found


def enable_units(tools, distro, extra=()):
    wanted = list(distro.units) + [u for u in extra if u not in distro.units]
    missing = [u for u in wanted if not unit_exists(tools, u)]
    if missing:
        raise StepFailed("enable units", f"{', '.join(missing)} not installed (the base's packages bring them)")
    units = wanted + payload_units(tools)
    tools.run("enable units", ["systemctl", "enable", *units],
              rooted=["systemctl", f"--root={tools.root}", "enable", *units])
    unwanted = [u for u in distro.disable_units if unit_exists(tools, u)]
    if unwanted:
        tools.run("disable units", ["systemctl", "disable", *unwanted],
                  rooted=["systemctl", f"--root={tools.root}", "disable", *unwanted])
    masked = [u for u in distro.mask_units if unit_exists(tools, u)]
    if masked:
        tools.run("mask units", ["systemctl", "mask", *masked],
                  rooted=["systemctl", f"--root={tools.root}", "mask", *masked])
    return units, unwanted + masked


def set_firewall_zone(tools):
    """Our own default zone: the distribution's (Fedora Server's opens Cockpit's 9090) is left alone."""
    zone = tools.path(f"etc/firewalld/zones/{FIREWALL_ZONE}.xml")
    zone.parent.mkdir(parents=True, exist_ok=True)
    zone.write_text(ZONE_XML, encoding="utf-8")
    os.chmod(zone, 0o644)
    conf = tools.path("etc/firewalld/firewalld.conf")
    text = conf.read_text(encoding="utf-8") if conf.exists() else ""
    line = f"DefaultZone={FIREWALL_ZONE}"
    if re.search(r"^DefaultZone=.*$", text, re.M):
        text = re.sub(r"^DefaultZone=.*$", line, text, count=1, flags=re.M)
    else:
        text += ("" if not text or text.endswith("\n") else "\n") + line + "\n"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(text, encoding="utf-8")   # a symlink (Fedora's alternatives) is written through


# --- initramfs


def kernel_modules(modules_dir):
    """Module names (with _) a kernel has, loadable or built in."""
    names = set()
    for listing in ("modules.dep", "modules.builtin"):
        try:
            text = (modules_dir / listing).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            path = line.split(":", 1)[0].strip()
            if path:
                names.add(re.sub(r"\.ko(\.(xz|zst|gz))?$", "", path.rsplit("/", 1)[-1]).replace("-", "_"))
    return names


def available_drivers(tools, say):
    """The drivers every installed kernel has; the others are named and left out (dracut refuses them)."""
    kernels = sorted(p for p in tools.path("usr/lib/modules").glob("*") if (p / "modules.dep").exists())
    if not kernels:
        say("    initramfs: no kernel modules in this tree to check the driver names against")
        return list(INITRAMFS_DRIVERS)
    wanted = []
    for driver in INITRAMFS_DRIVERS:
        lacking = [k.name for k in kernels if driver not in kernel_modules(k)]
        if lacking:
            say(f"    warning: initramfs: kernel {', '.join(lacking)} has no driver {driver}; left out")
        else:
            wanted.append(driver)
    return wanted


def initramfs_config_text(distro, drivers):
    if distro.initramfs_tool == "dracut":
        return ("# ca-appliance provision: the drivers of every import target (QEMU/KVM, VMware,\n"
                "# VirtualBox, Hyper-V), not only the installer's virtual hardware.\n"
                'hostonly="no"\n'
                f'add_drivers+=" {" ".join(drivers)} "\n')
    return ("#!/bin/sh\n"
            "# ca-appliance provision: the drivers of every import target (QEMU/KVM, VMware,\n"
            "# VirtualBox, Hyper-V), so one initramfs boots on all.\n"
            'PREREQ=""\n'
            'prereqs() { echo "$PREREQ"; }\n'
            'case "$1" in\n'
            "    prereqs) prereqs; exit 0 ;;\n"
            "esac\n"
            ". /usr/share/initramfs-tools/hook-functions\n"
            f"manual_add_modules {' '.join(drivers)}\n")


def build_initramfs(tools, distro, say):
    drivers = available_drivers(tools, say)
    config = tools.path(distro.initramfs_config)
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(initramfs_config_text(distro, drivers), encoding="utf-8")
    os.chmod(config, 0o755 if distro.initramfs_tool == "initramfs-tools" else 0o644)
    tools.run(f"initramfs ({distro.initramfs_tool})", list(distro.initramfs_command))
    return drivers


# --- the guest program, byte-compiled


GUEST_PACKAGE = "usr/lib/ca-appliance/ca_appliance"


def compile_guest(tools):
    """The guest package's modules byte-compiled by the python3 that runs them (provision runs under
    it in the target), so no boot compiles them: the first boot's start-up, and the page server and
    watch, whose units keep /usr read-only. Checked-hash .pyc: no time stamp (the same tree from the
    same inputs), and a changed source is never run from a stale one. Returns the cache tag."""
    package = tools.path(GUEST_PACKAGE)
    # force: provision's own imports have already left time-stamped .pyc of the modules it uses,
    # which compileall would otherwise keep as "up to date"
    ok = compileall.compile_dir(str(package), quiet=1, ddir="/" + GUEST_PACKAGE, workers=1, force=True,
                                invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    if not ok:
        raise StepFailed("byte-compile", f"/{GUEST_PACKAGE} has a module python3 {sys.version.split()[0]} "
                                         "can't compile")
    return sys.implementation.cache_tag


# --- generalisation and checks


def read_machine_id(tools):
    try:
        value = tools.path("etc/machine-id").read_text(encoding="utf-8").strip()
    except OSError:
        return ""
    return value if re.fullmatch(r"[0-9a-f]{32}", value) else ""


def rename_boot_entries(tools, distro, installer_id):
    """<installer machine ID>-<kernel>.conf becomes <NEUTRAL_ENTRY_ID>-<kernel>.conf, GRUB's saved_entry
    with it; returns the new names."""
    if not distro.boot_entries or not installer_id or installer_id == NEUTRAL_ENTRY_ID:
        return []
    renamed = []
    for entry in sorted(tools.path(distro.boot_entries).glob(f"{installer_id}-*.conf")):
        target = entry.with_name(NEUTRAL_ENTRY_ID + entry.name[len(installer_id):])
        os.rename(entry, target)   # same directory: mode and SELinux label stay
        renamed.append(target.name)
    grubenv = tools.path(distro.grubenv) if distro.grubenv else None
    if renamed and grubenv is not None and grubenv.is_file() and not grubenv.is_symlink():
        block = grubenv.read_bytes()
        # the same length: GRUB's environment block stays exactly its 1024 bytes
        fixed = re.sub(rb"^saved_entry=" + installer_id.encode() + rb"-", b"saved_entry=" + NEUTRAL_ENTRY_ID.encode()
                       + b"-", block, flags=re.M)
        if fixed != block:
            grubenv.write_bytes(fixed)
    if renamed:
        info = tools.path(MACHINE_INFO)
        text = info.read_text(encoding="utf-8") if info.exists() else ""
        text = re.sub(r"^KERNEL_INSTALL_MACHINE_ID=.*\n?", "", text, flags=re.M)
        if text and not text.endswith("\n"):
            text += "\n"
        info.write_text(text + f"KERNEL_INSTALL_MACHINE_ID={NEUTRAL_ENTRY_ID}\n", encoding="utf-8")
        os.chmod(info, 0o644)
    return renamed


def remove_leftovers(tools, distro):
    for pattern in distro.leftovers:
        for item in tools.root.glob(pattern):
            if item.is_symlink() or item.is_file():
                item.unlink()
            elif item.is_dir():
                shutil.rmtree(item)


def generalise(tools, distro):
    """Nothing unique to one appliance (or to the build) ships: each makes its own at first boot."""
    for key in tools.path("etc/ssh").glob("ssh_host_*"):
        key.unlink()
    renamed = rename_boot_entries(tools, distro, read_machine_id(tools))
    machine_id = tools.path("etc/machine-id")
    machine_id.write_text("")
    os.chmod(machine_id, 0o444)
    dbus_id = tools.path("var/lib/dbus/machine-id")
    if dbus_id.exists() and not dbus_id.is_symlink():
        dbus_id.unlink()
    for relative in MACHINE_SECRETS:
        path = tools.path(relative)
        if path.is_symlink() or path.is_file():
            path.unlink()
    remove_leftovers(tools, distro)
    for pattern in distro.package_caches:
        for item in tools.root.glob(pattern):
            if item.is_symlink() or item.is_file():
                item.unlink()
            elif item.is_dir():
                shutil.rmtree(item)
    return renamed


def check_step_cli(tools, wanted):
    """The step CLI RPM makes /usr/bin/step with update-alternatives, which it does not require."""
    step = tools.path("usr/bin/step")
    # a test tree's alternatives symlink points at the host's /etc: there only its presence counts
    present = step.exists() if tools.in_target else os.path.lexists(step)
    if wanted and not present:
        raise StepFailed("step CLI", "artifacts.step_cli is enabled but /usr/bin/step is missing "
                                     "(its package makes it with `alternatives`: is that installed?)")


def relabel(tools, distro, say):
    if not distro.relabel:
        return
    paths = ["/" + p for p in RELABEL_PATHS if os.path.lexists(tools.path(p))]
    tools.run("SELinux labels", ["restorecon", "-RF", *paths])
    if "restorecon" not in tools.stand_ins:
        say("    SELinux labels restored")


def provision(base, root="/", *, stand_ins=(), record=None, out=sys.stdout):
    """Provision the tree at root as the appliance on `base`; a file that cannot be written is a
    failed step naming it, never a traceback."""
    try:
        _provision(base, root, stand_ins=stand_ins, record=record, out=out)
    except OSError as error:
        raise StepFailed("provision", f"{error.filename or ''}: {error.strerror or error}") from None


def _provision(base, root, *, stand_ins, record, out):
    if base not in DISTROS:
        raise UserError(f"provision: --base {base!r} is not one of: {', '.join(DISTROS)}")
    root = Path(root)
    if stand_ins and (root == Path("/") or record is None):
        raise UserError("provision: --stand-in needs --root DIR and --record FILE (tests only; a real build runs "
                        "every tool)")
    tools = Tools(root, stand_ins, record, out)
    distro = DISTROS[base]

    def say(text):
        print(text, file=out, flush=True)

    check_base(tools, base)
    user, keys, password_hash, step_cli = read_inputs(tools)
    extra_units = read_extra_units(tools)
    say(f"ca-appliance provision --base {base}" + ("" if tools.in_target else f" --root {root}"))
    check_step_cli(tools, step_cli)
    create_step_user(tools)
    say("    user step (sysusers), home /var/lib/step-ca")
    lock_root(tools)
    create_admin(tools, distro, user, keys, password_hash)
    say(f"    admin {user}: group {distro.sudo_group}, {len(keys)} SSH key(s), "
        f"{'password' if password_hash else 'key only, sudo without password'}; root locked; sudoers checked")
    write_sshd_dropin(tools, user)
    say(f"    sshd: key-only, no root, only {user} ({sshd.DROPIN}), from the first boot on")
    units, disabled = enable_units(tools, distro, extra_units)
    say(f"    enabled: {' '.join(units)}" + (f"; disabled or masked: {' '.join(disabled)}" if disabled else ""))
    set_firewall_zone(tools)
    say(f"    firewall: default zone {FIREWALL_ZONE} (ssh, step-ca)")
    drivers = build_initramfs(tools, distro, say)
    say(f"    initramfs ({distro.initramfs_tool}): {len(drivers)} drivers")
    tag = compile_guest(tools)
    say(f"    guest program byte-compiled ({tag}, checked-hash)")
    renamed = generalise(tools, distro)
    tools.path(PROVISION_INPUT).unlink()   # its password hash is in /etc/shadow now, nowhere else
    say("    generalised: no SSH host keys, empty machine-id, no random seed or credential secret, "
        f"{distro.package_tool} caches emptied, no installer leftovers"
        + (f"; boot entries: {' '.join(renamed)}" if renamed else ""))
    relabel(tools, distro, say)   # last: labels what every step above wrote
    say("provision: done")
