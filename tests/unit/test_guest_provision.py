"""`ca-appliance provision`, the one program that provisions both bases, run for real on test roots.

A Fedora-layout tree (usr/sbin -> bin as on Fedora 42+, the wheel group, Fedora's unit names,
Cockpit's socket enabled, FedoraServer firewall zone) and a Debian-layout one get the real payload,
extracted with the very tar options the kickstart's %post uses, then `ca-appliance provision --base
fedora|debian --root DIR` runs under the distribution python (/usr/bin/python3) with the host's
real systemd-sysusers, useradd/usermod/chpasswd (--root), systemctl (--root) and visudo.

Recorded stand-ins, not run: dracut / update-initramfs (a test tree has no kernel to build an
initramfs for) and restorecon (no SELinux policy here). The test checks the recorded calls and the
driver configuration they would read; that the drivers land in an initramfs is checked on the real
Debian image (tests/image), and on Fedora only when Anaconda runs, which it never does here.
"""
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from ca_appliance import provision

from image.config import PROJECT_ROOT, load_config
from image.payload import PAYLOAD_TAR_OPTIONS, write_payload_tarball

GUEST_PYTHON = "/usr/bin/python3"
LAUNCHER = PROJECT_ROOT / "overlay/usr/bin/ca-appliance"
# A whole Ed25519 key blob (32 bytes of key): the appliance refuses truncated key data.
KEY_1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1Y2t5bnVtYmVyc2V2ZW5lbGV2ZW50aGlydGVlbiEh admin@laptop"
KEY_2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBbQ3oVxjA5bKXqXm5N9Jh3vCw8kq3uX0h1d2s4d5f6g bob@laptop"
# a well-formed SHA-512 crypt hash (`openssl passwd -6`): sid's chpasswd (shadow 4.20) refuses a
# malformed one (Debian 12's 4.13 and Debian 13's 4.17 still take it)
HASH = "$6$saltsalt$2eJ1V5IUTzQhEBtb15dBz5FvoSeHGlsXsNPLfxIHYi49rAv1wycoO95vRlgFdeIA.wE2D9aTC83v9D3rUpjEu/"
FEDORA_UNITS = {"sshd.service": "multi-user.target", "chronyd.service": "multi-user.target",
                "NetworkManager.service": "multi-user.target", "firewalld.service": "multi-user.target",
                "qemu-guest-agent.service": "multi-user.target", "vmtoolsd.service": "multi-user.target",
                "cockpit.socket": "sockets.target", "sshd-keygen@.service": "sshd-keygen.target",
                "dnf5-automatic.timer": "timers.target"}   # updates.security's timer (provision.json extra_units)
DEBIAN_UNITS = {"ssh.service": "multi-user.target", "chrony.service": "multi-user.target",
                "NetworkManager.service": "multi-user.target", "firewalld.service": "multi-user.target",
                "open-vm-tools.service": "multi-user.target", "serial-getty@.service": "getty.target",
                "apt-daily.timer": "timers.target", "apt-daily-upgrade.timer": "timers.target",
                "e2scrub_reap.service": "multi-user.target",   # e2fsprogs': masked by provision
                # Debian 13's openssh-server: `ssh-keygen -A` on the first boot, masked by provision
                "sshd-keygen.service": "ssh.service"}
# a kernel lacking one of the wanted drivers: provision names it and leaves it out
KERNEL_MODULES = [d for d in provision.INITRAMFS_DRIVERS if d != "sym53c8xx"]


def needs_real_tools():
    if os.geteuid() != 0:
        pytest.skip("provision creates users and chowns in the test root: needs root")
    for tool in ("systemd-sysusers", "useradd", "usermod", "chpasswd", "systemctl", "visudo"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (host-packages.txt)")
    if not Path(GUEST_PYTHON).exists():
        pytest.skip(f"{GUEST_PYTHON} (the distribution python the guest code runs on) is missing")


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def base_tree(root: Path, *, os_id: str, units: dict, sudo_group: str, gid: int) -> None:
    """What a base's packages leave before the payload: accounts, units, sshd keys, ids, firewalld."""
    for d in ("usr/bin", "usr/lib/systemd/system", "etc/systemd/system", "home", "var/lib/systemd", "root",
              "etc/skel", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    write(root / "etc/os-release", f'ID={os_id}\nNAME="{os_id} test tree"\n')
    write(root / "etc/passwd", "root:x:0:0:root:/root:/bin/bash\n")
    write(root / "etc/shadow", "root:$6$xyz$oldhash:19000:0:99999:7:::\n", 0o640)
    write(root / "etc/group", f"root:x:0:\n{sudo_group}:x:{gid}:\n")
    write(root / "etc/gshadow", f"root:::\n{sudo_group}:::\n", 0o640)
    write(root / "etc/sudoers", "root ALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n", 0o440)
    for unit, target in units.items():
        write(root / "usr/lib/systemd/system" / unit, f"[Unit]\nDescription={unit}\n\n[Service]\nExecStart=/bin/true\n"
                                                    f"\n[Install]\nWantedBy={target}\n")
    for name in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "ssh_host_rsa_key"):
        write(root / "etc/ssh" / name, "build host key\n", 0o600)
    write(root / "etc/machine-id", "0123456789abcdef0123456789abcdef\n")
    write(root / "var/lib/systemd/random-seed", "seed", 0o600)
    write(root / "var/lib/systemd/credential.secret", "secret", 0o400)
    write(root / "etc/firewalld/firewalld.conf", "# firewalld config file\nDefaultZone=public\nLogDenied=off\n")
    modules = root / "usr/lib/modules/6.99.0-test"
    write(modules / "modules.dep", "".join(f"kernel/drivers/x/{m.replace('_', '-')}.ko.xz:\n"
                                           for m in KERNEL_MODULES if m != "virtio_pci"))
    write(modules / "modules.builtin", "kernel/drivers/virtio/virtio_pci.ko\n")


def fedora_tree(root: Path) -> None:
    """Fedora 42+: /usr/sbin is a symlink to bin (and /bin, /sbin, /lib point into /usr)."""
    root.mkdir(parents=True, exist_ok=True)
    base_tree(root, os_id="fedora", units=FEDORA_UNITS, sudo_group="wheel", gid=10)
    os.symlink("bin", root / "usr/sbin")
    os.symlink("usr/bin", root / "bin")
    os.symlink("usr/sbin", root / "sbin")
    os.symlink("usr/lib", root / "lib")
    # Fedora Server enables Cockpit's socket
    wants = root / "etc/systemd/system/sockets.target.wants"
    wants.mkdir(parents=True)
    os.symlink("/usr/lib/systemd/system/cockpit.socket", wants / "cockpit.socket")
    write(root / "etc/firewalld/firewalld.conf", "DefaultZone=FedoraServer\n")
    anaconda_leftovers(root)


INSTALLER_ID = "0123456789abcdef0123456789abcdef"   # base_tree's etc/machine-id: the installer's
KERNEL = "6.99.0-test"


def grubenv_block(saved_entry: str) -> bytes:
    """GRUB's environment block as grub2-editenv writes it: 1024 bytes, padded with '#'."""
    text = f"# GRUB Environment Block\nsaved_entry={saved_entry}\nboot_success=0\n".encode()
    return text + b"#" * (1024 - len(text))


def anaconda_leftovers(root: Path) -> None:
    """What Anaconda leaves in the target before the last %post (issue 22): its NIC's connection
    profile, kickstarts and logs, its chrooted %post scripts, boot entries named by its machine ID."""
    write(root / "etc/NetworkManager/system-connections/enp1s0.nmconnection",
          "[connection]\nid=enp1s0\nuuid=3c9a2b51-0d62-4a4b-9d1e-5f0c2a7b9e11\ntype=ethernet\n"
          "interface-name=enp1s0\n\n[ipv4]\nmethod=auto\n", 0o600)
    write(root / "etc/NetworkManager/system-connections/README", "kept: not a connection profile\n")
    write(root / "root/anaconda-ks.cfg", "# Generated by Anaconda 45.21\nurl --url=http://10.0.2.2:41237/\n", 0o600)
    write(root / "root/original-ks.cfg", "# the build's kickstart\n", 0o600)
    write(root / "var/log/anaconda/anaconda.log", "INFO anaconda: build host buildbox.lab.example\n", 0o600)
    write(root / "var/log/anaconda/journal.log", "buildbox kernel: ...\n", 0o600)
    write(root / "tmp/ks-script-k3j2h1", "# the hybrid-boot %post\n", 0o700)
    write(root / f"boot/loader/entries/{INSTALLER_ID}-{KERNEL}.conf",
          f"title Fedora Linux ({KERNEL}) 45 (Server Edition)\nversion {KERNEL}\nlinux /boot/vmlinuz-{KERNEL}\n"
          f"initrd /boot/initramfs-{KERNEL}.img\noptions root=UUID=6a1b8d0e ro console=ttyS0,115200n8\n", 0o600)
    write(root / f"boot/loader/entries/{INSTALLER_ID}-0-rescue.conf", "title Fedora Linux (0-rescue)\n", 0o600)
    (root / "boot/grub2").mkdir(parents=True, exist_ok=True)
    (root / "boot/grub2/grubenv").write_bytes(grubenv_block(f"{INSTALLER_ID}-{KERNEL}"))


def check_no_anaconda_leftovers(root: Path) -> None:
    assert [p.name for p in (root / "etc/NetworkManager/system-connections").iterdir()] == ["README"]
    for gone in ("root/anaconda-ks.cfg", "root/original-ks.cfg", "var/log/anaconda", "tmp/ks-script-k3j2h1"):
        assert not os.path.lexists(root / gone), gone
    neutral = "f" * 32
    entries = sorted(p.name for p in (root / "boot/loader/entries").iterdir())
    assert entries == [f"{neutral}-0-rescue.conf", f"{neutral}-{KERNEL}.conf"]
    assert os.stat(root / f"boot/loader/entries/{neutral}-{KERNEL}.conf").st_mode & 0o777 == 0o600
    assert (root / "boot/grub2/grubenv").read_bytes() == grubenv_block(f"{neutral}-{KERNEL}")
    # kernel-install names (and finds, to remove) entries by this ID from now on, whatever machine-id
    # each appliance makes at first boot (Fedora's grub plugin uses $KERNEL_INSTALL_MACHINE_ID)
    assert (root / "etc/machine-info").read_text() == f"KERNEL_INSTALL_MACHINE_ID={neutral}\n"
    every_file = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    assert not [p for p in every_file if INSTALLER_ID.encode() in p.read_bytes()]


def debian_tree(root: Path) -> None:
    """Debian 12, merged /usr: /bin, /sbin, /lib are symlinks into /usr; /usr/sbin is a directory."""
    root.mkdir(parents=True, exist_ok=True)
    base_tree(root, os_id="debian", units=DEBIAN_UNITS, sudo_group="sudo", gid=27)
    (root / "usr/sbin").mkdir()
    os.symlink("usr/bin", root / "bin")
    os.symlink("usr/sbin", root / "sbin")
    os.symlink("usr/lib", root / "lib")
    write(root / "etc/resolv.conf", "nameserver 192.0.2.53\n")   # the build host's, copied in
    (root / "var/cache/apt/archives").mkdir(parents=True)
    write(root / "var/cache/apt/archives/sudo_1.9_amd64.deb", "deb")


def lay_payload(root: Path, tmp_path: Path, *, step_cli: bool = False, password_hash: str | None = HASH) -> Path:
    base = "debian" if "ID=debian" in (root / "etc/os-release").read_text() else "fedora"   # the tree's own
    cfg = load_config(overrides={"image": {"base": base},
                                 "admin": {"user": "opsadmin", "ssh_authorized_keys": [KEY_1, KEY_2],
                                           "password_hash": password_hash},
                                 "artifacts": {"step_cli": {"enabled": step_cli}}})
    payload = write_payload_tarball(cfg, tmp_path / "payload.tar.gz")
    # the kickstart's %post extraction, options and all
    subprocess.run(["tar", "--extract", "--gzip", f"--file={payload}", f"--directory={root}",
                    *PAYLOAD_TAR_OPTIONS], check=True)
    return payload


def run_provision(root: Path, base: str, stand_ins: list[str], record: Path):
    argv = [GUEST_PYTHON, str(LAUNCHER), "provision", "--base", base, "--root", str(root), "--record", str(record)]
    for tool in stand_ins:
        argv += ["--stand-in", tool]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def passwd(root: Path, name: str) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in (root / "etc" / name).read_text().splitlines()}


def is_enabled(root: Path, unit: str) -> str:
    return subprocess.run(["systemctl", f"--root={root}", "is-enabled", unit],
                          capture_output=True, text=True).stdout.strip()


def check_common(root: Path, result, sudo_group: str) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout + result.stderr
    assert HASH not in out   # the password hash is never shown
    # users: step from sysusers (system uid, no login), the admin in the sudo group with its keys
    users = passwd(root, "passwd")
    step = users["step"]
    assert int(step[2]) < 1000 and step[5] == "/var/lib/step-ca" and step[6] == "/usr/sbin/nologin"
    assert os.stat(root / "var/lib/step-ca").st_uid == int(step[2])
    admin = users["opsadmin"]
    assert admin[5] == "/home/opsadmin" and admin[6] == "/bin/bash"
    assert "opsadmin" in passwd(root, "group")[sudo_group][3].split(",")
    shadow = passwd(root, "shadow")
    assert shadow["opsadmin"][1] == HASH and shadow["root"][1].startswith("!")   # root locked
    keys = root / "home/opsadmin/.ssh/authorized_keys"
    assert keys.read_text() == f"{KEY_1}\n{KEY_2}\n"
    assert (os.stat(keys).st_mode & 0o777, os.stat(keys).st_uid) == (0o600, int(admin[2]))
    # sudoers: accepted by visudo, 0440, a password rule (the admin has one)
    sudoers = root / "etc/sudoers.d/ca-appliance-admin"
    assert os.stat(sudoers).st_mode & 0o777 == 0o440
    assert re.search(r"^opsadmin ALL=\(ALL:ALL\) ALL$", sudoers.read_text(), re.M)
    check = subprocess.run(["visudo", "-c", "-f", str(sudoers)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # units: every unit the payload ships (with [Install]) and the base's
    for unit in ("step-ca.service", "ca-appliance-firstboot.service", "ca-appliance-growroot.service",
                 "ca-appliance-ssh-hostkeys.service", "ca-appliance-recover.service", "NetworkManager.service",
                 "firewalld.service"):
        assert is_enabled(root, unit) == "enabled", unit
    # firewall: the appliance's own zone is the default: ssh and step-ca, no cockpit
    zone = (root / "etc/firewalld/zones/ca-appliance.xml").read_text()
    assert re.findall(r'<service name="([^"]+)"/>', zone) == ["ssh", "step-ca", "dhcpv6-client"]
    assert "cockpit" not in zone and "<port" not in zone
    assert re.search(r"^DefaultZone=ca-appliance$", (root / "etc/firewalld/firewalld.conf").read_text(), re.M)
    # generalised
    assert list((root / "etc/ssh").glob("ssh_host_*")) == []
    assert (root / "etc/machine-id").read_text() == ""
    assert not (root / "var/lib/systemd/random-seed").exists()
    assert not (root / "var/lib/systemd/credential.secret").exists()
    assert not (root / "etc/ca-appliance/provision.json").exists()   # the hash is in /etc/shadow only
    # the distribution's directory symlinks are intact
    for link, target in (("bin", "usr/bin"), ("lib", "usr/lib")):
        assert os.readlink(root / link) == target


def test_fedora_layout_root_provisions_with_wheel_dracut_and_selinux_recorded(tmp_path):
    needs_real_tools()
    root = tmp_path / "fedora-root"
    fedora_tree(root)
    lay_payload(root, tmp_path)
    assert os.readlink(root / "usr/sbin") == "bin"   # the payload did not replace it
    record = tmp_path / "recorded.txt"
    result = run_provision(root, "fedora", ["dracut", "restorecon"], record)
    check_common(root, result, "wheel")
    assert os.readlink(root / "usr/sbin") == "bin" and (root / "usr/sbin/ca-appliance").exists()
    assert "sudo" not in passwd(root, "group")
    for unit in ("sshd.service", "chronyd.service", "qemu-guest-agent.service", "vmtoolsd.service",
                 "dnf5-automatic.timer"):
        assert is_enabled(root, unit) == "enabled", unit
    assert is_enabled(root, "cockpit.socket") == "disabled"
    # recorded stand-ins (not run here): the initramfs, then the relabel of what provision wrote
    recorded = record.read_text().splitlines()
    assert recorded[0] == "dracut --force --regenerate-all"
    assert recorded[1].startswith("restorecon -RF /etc /home /var/lib/step-ca /usr/lib/ca-appliance")
    assert "recorded, not run (stand-in)" in result.stdout
    conf = (root / "etc/dracut.conf.d/90-ca-appliance-drivers.conf").read_text()
    (drivers,) = re.findall(r'^add_drivers\+=" (.*) "$', conf, re.M)
    assert drivers.split() == [d for d in provision.INITRAMFS_DRIVERS if d != "sym53c8xx"]
    assert 'hostonly="no"' in conf
    assert "kernel 6.99.0-test has no driver sym53c8xx; left out" in result.stdout
    check_no_anaconda_leftovers(root)
    assert f"boot entries: {'f' * 32}-0-rescue.conf {'f' * 32}-{KERNEL}.conf" in result.stdout


def test_debian_layout_root_provisions_with_sudo_and_initramfs_tools_recorded(tmp_path):
    needs_real_tools()
    root = tmp_path / "debian-root"
    debian_tree(root)
    lay_payload(root, tmp_path, password_hash=None)
    record = tmp_path / "recorded.txt"
    # in a build provision runs the tree's own copy, whose imports leave time-stamped .pyc behind first
    writing = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([GUEST_PYTHON, "-c", "import ca_appliance.cli"], cwd=root / "usr/lib/ca-appliance", check=True,
                   env=writing)
    assert (root / "usr/lib/ca-appliance/ca_appliance/__pycache__").is_dir()
    argv_result = run_provision(root, "debian", ["update-initramfs"], record)
    assert argv_result.returncode == 0, argv_result.stdout + argv_result.stderr
    sudoers = (root / "etc/sudoers.d/ca-appliance-admin").read_text()
    assert re.search(r"^opsadmin ALL=\(ALL:ALL\) NOPASSWD: ALL$", sudoers, re.M)   # key only: no password to ask
    assert "opsadmin" in passwd(root, "group")["sudo"][3].split(",")
    assert passwd(root, "shadow")["opsadmin"][1] in ("!", "!*", "*")
    assert (root / "usr/sbin").is_dir() and not (root / "usr/sbin").is_symlink()
    for unit in ("ssh.service", "chrony.service", "open-vm-tools.service", "serial-getty@ttyS0.service",
                 "step-ca.service", "ca-appliance-growroot.service", "ca-appliance-ssh-hostkeys.service",
                 "apt-daily.timer", "apt-daily-upgrade.timer"):
        assert is_enabled(root, unit) == "enabled", unit
    assert is_enabled(root, "e2scrub_reap.service") == "masked"
    assert is_enabled(root, "sshd-keygen.service") == "masked"
    assert record.read_text().splitlines() == ["update-initramfs -u -k all"]   # no restorecon: no SELinux
    hook = root / "etc/initramfs-tools/hooks/ca-appliance-drivers"
    assert os.stat(hook).st_mode & 0o777 == 0o755
    (line,) = [x for x in hook.read_text().splitlines() if x.startswith("manual_add_modules ")]
    assert "vmxnet3" in line and "hv_storvsc" in line and "sym53c8xx" not in line
    assert not (root / "etc/resolv.conf").exists() and not list((root / "var/cache/apt/archives").glob("*.deb"))
    assert list((root / "etc/ssh").glob("ssh_host_*")) == [] and (root / "etc/machine-id").read_text() == ""
    check_guest_compiled(root, argv_result.stdout)


def check_guest_compiled(root: Path, out: str) -> None:
    """Every module of the guest package has a checked-hash .pyc of the python3 provision ran under
    (in a build: the image's own), naming the module's path in the image, so no boot compiles it."""
    tag = subprocess.run([GUEST_PYTHON, "-c", "import sys; print(sys.implementation.cache_tag)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert f"guest program byte-compiled ({tag}, checked-hash)" in out
    package = root / "usr/lib/ca-appliance/ca_appliance"
    modules = sorted(package.glob("*.py"))
    assert len(modules) > 20
    for module in modules:
        pyc = (package / "__pycache__" / f"{module.stem}.{tag}.pyc").read_bytes()
        assert int.from_bytes(pyc[4:8], "little") == 0b11, module.name   # hash-based, checked against the source
        assert f"/usr/lib/ca-appliance/ca_appliance/{module.name}".encode() in pyc
    # a source changed after the build is run from the source, never from its stale .pyc
    (package / "timing.py").write_text((package / "timing.py").read_text() + "\nCOMPILED_CHECK = 1\n")
    probe = subprocess.run([GUEST_PYTHON, "-c", "import ca_appliance.timing as t; print(t.COMPILED_CHECK)"],
                           capture_output=True, text=True, cwd=package.parent, env={"PYTHONDONTWRITEBYTECODE": "1"})
    assert probe.stdout.strip() == "1", probe.stderr


def test_step_cli_enabled_without_usr_bin_step_fails(tmp_path):
    """The step-cli RPM makes /usr/bin/step with alternatives, which it does not require: provision
    fails the install (the %post is --erroronfail) rather than ship an image without it."""
    needs_real_tools()
    root = tmp_path / "fedora-root"
    fedora_tree(root)
    lay_payload(root, tmp_path, step_cli=True)
    result = run_provision(root, "fedora", ["dracut", "restorecon"], tmp_path / "recorded.txt")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "ca-appliance: step CLI failed: artifacts.step_cli is enabled but /usr/bin/step is missing "
        "(its package makes it with `alternatives`: is that installed?)"]
    assert "step" not in passwd(root, "passwd")   # refused before any change
    os.symlink("/etc/alternatives/step", root / "usr/bin/step")
    assert run_provision(root, "fedora", ["dracut", "restorecon"], tmp_path / "recorded.txt").returncode == 0


def test_the_wrong_base_or_a_stand_in_without_root_is_refused_before_any_change(tmp_path):
    needs_real_tools()
    root = tmp_path / "debian-root"
    debian_tree(root)
    lay_payload(root, tmp_path)
    result = run_provision(root, "fedora", ["dracut"], tmp_path / "r.txt")
    assert result.returncode == 2
    assert result.stderr.strip() == f"ca-appliance: provision: --base fedora: {root} is debian, not fedora"
    assert "opsadmin" not in (root / "etc/passwd").read_text()
    real = subprocess.run([GUEST_PYTHON, str(LAUNCHER), "provision", "--base", "debian", "--stand-in", "dracut",
                           "--record", str(tmp_path / "r.txt")], capture_output=True, text=True)
    assert real.returncode == 2 and "--stand-in needs --root DIR" in real.stderr


# --- generalisation of Anaconda's leftovers, on the table's Fedora row (no root needed)


def test_generalise_removes_anacondas_leftovers_and_renames_its_boot_entries(tmp_path):
    root = tmp_path / "fedora-root"
    write(root / "etc/machine-id", INSTALLER_ID + "\n")
    write(root / "etc/machine-info", "PRETTY_HOSTNAME=build\nKERNEL_INSTALL_MACHINE_ID=" + INSTALLER_ID)
    anaconda_leftovers(root)
    renamed = provision.generalise(provision.Tools(root), provision.DISTROS["fedora"])
    assert renamed == [f"{'f' * 32}-0-rescue.conf", f"{'f' * 32}-{KERNEL}.conf"]
    assert (root / "etc/machine-id").read_text() == ""
    assert (root / "etc/machine-info").read_text() == f"PRETTY_HOSTNAME=build\nKERNEL_INSTALL_MACHINE_ID={'f' * 32}\n"
    assert not (root / "var/log/anaconda").exists()
    assert list((root / "etc/NetworkManager/system-connections").glob("*.nmconnection")) == []
    # the Debian row has no boot entries to rename: a tree with some is left as it is
    other = tmp_path / "debian-root"
    write(other / "etc/machine-id", INSTALLER_ID + "\n")
    write(other / f"boot/loader/entries/{INSTALLER_ID}-{KERNEL}.conf", "title x\n")
    assert provision.generalise(provision.Tools(other), provision.DISTROS["debian"]) == []
    assert (other / f"boot/loader/entries/{INSTALLER_ID}-{KERNEL}.conf").exists()


# --- the distribution table, both ways (no root needed)


def test_the_distribution_table_debian_and_fedora():
    debian, fedora = provision.DISTROS["debian"], provision.DISTROS["fedora"]
    assert (debian.sudo_group, fedora.sudo_group) == ("sudo", "wheel")
    assert (debian.initramfs_tool, fedora.initramfs_tool) == ("initramfs-tools", "dracut")
    assert debian.initramfs_command == ("update-initramfs", "-u", "-k", "all")
    assert fedora.initramfs_command == ("dracut", "--force", "--regenerate-all")
    assert (debian.relabel, fedora.relabel) == (False, True)
    assert (debian.package_tool, fedora.package_tool) == ("apt", "dnf")
    assert "ssh.service" in debian.units and "sshd.service" in fedora.units
    assert fedora.disable_units == ("cockpit.socket",) and debian.disable_units == ()
    assert set(provision.DISTROS) == {"debian", "fedora"}


def test_initramfs_drivers_cover_every_import_target_on_both_bases():
    wanted = {"virtio_blk", "virtio_scsi", "virtio_net", "virtio_pci", "ahci", "ata_piix", "e1000", "e1000e",
              "vmw_pvscsi", "vmxnet3", "mptspi", "mptsas", "mptscsih", "sym53c8xx", "megaraid_sas",
              "hv_storvsc", "hv_netvsc"}
    assert wanted <= set(provision.INITRAMFS_DRIVERS)
    for name in ("debian", "fedora"):
        text = provision.initramfs_config_text(provision.DISTROS[name], list(provision.INITRAMFS_DRIVERS))
        assert all(d in text.split() or f" {d} " in text for d in wanted), name


def test_payload_units_are_found_by_their_install_section(tmp_path):
    tools = provision.Tools(tmp_path)
    units = tmp_path / "etc/systemd/system"
    write(units / "a.service", "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n")
    write(units / "b.timer", "[Timer]\nOnCalendar=daily\n\n[Install]\nWantedBy=timers.target\n")
    write(units / "static.service", "[Service]\nExecStart=/bin/true\n")
    write(units / "drop.conf", "[Install]\n")
    (units / "multi-user.target.wants").mkdir()
    os.symlink("/usr/lib/systemd/system/x.service", units / "x.service")
    assert provision.payload_units(tools) == ["a.service", "b.timer"]


def test_provision_input_is_validated_without_showing_the_hash(tmp_path):
    tools = provision.Tools(tmp_path)
    bad = {"admin": {"user": "opsadmin", "ssh_authorized_keys": [], "password_hash": "plain:text"}}
    write(tmp_path / provision.PROVISION_INPUT, json.dumps(bad), 0o600)
    with pytest.raises(provision.UserError) as e:
        provision.read_inputs(tools)
    assert "admin.password_hash" in str(e.value) and "plain" not in str(e.value)
    write(tmp_path / provision.PROVISION_INPUT, json.dumps({"admin": {"user": "Root Admin"}}), 0o600)
    with pytest.raises(provision.UserError, match="admin.user 'Root Admin'"):
        provision.read_inputs(tools)


# --- the payload tarball and directory symlinks (issue defect 2)


def extract(tarball: Path, root: Path, *options: str) -> None:
    subprocess.run(["tar", "--extract", "--gzip", f"--file={tarball}", f"--directory={root}", *options], check=True)


def merged_sbin_tree(root: Path) -> None:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/ls").write_text("the distribution's")
    os.symlink("bin", root / "usr/sbin")


def test_defect_2_an_old_style_payload_replaces_usr_sbin_and_ours_cannot(tmp_path):
    # the bug: a payload with a member for usr/sbin/, extracted without --keep-directory-symlink
    old = tmp_path / "old.tar.gz"
    with tarfile.open(old, "w:gz") as tar:
        for name in ("usr", "usr/sbin"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        info = tarfile.TarInfo("usr/sbin/ca-appliance")
        info.size = 2
        tar.addfile(info, __import__("io").BytesIO(b"#!"))
    broken = tmp_path / "broken"
    merged_sbin_tree(broken)
    extract(old, broken, "--no-overwrite-dir")
    assert not (broken / "usr/sbin").is_symlink()               # reproduced: a directory now ...
    assert not (broken / "usr/sbin/ls").exists()                # ... so every /usr/sbin/x is gone

    # the fix: our payload has no member for any system directory, and the kickstart's tar keeps symlinks
    ours = write_payload_tarball(load_config(), tmp_path / "payload.tar.gz")
    with tarfile.open(ours) as tar:
        dirs = [m.name for m in tar.getmembers() if m.isdir()]
    assert dirs and all("ca-appliance" in d or "ca_appliance" in d for d in dirs), dirs
    assert "usr/sbin" not in dirs and "usr" not in dirs and "etc" not in dirs
    fixed = tmp_path / "fixed"
    merged_sbin_tree(fixed)
    extract(ours, fixed, *PAYLOAD_TAR_OPTIONS)
    assert os.readlink(fixed / "usr/sbin") == "bin" and (fixed / "usr/sbin/ls").exists()
    assert (fixed / "usr/bin/ca-appliance").exists()
    # and the old payload with the kickstart's options keeps the symlink too
    also = tmp_path / "also"
    merged_sbin_tree(also)
    extract(old, also, *PAYLOAD_TAR_OPTIONS)
    assert os.readlink(also / "usr/sbin") == "bin"


def test_payload_carries_provision_input_0600_and_build_facts(tmp_path):
    cfg = load_config(overrides={"admin": {"user": "opsadmin", "ssh_authorized_keys": [KEY_1],
                                           "password_hash": HASH}})
    payload = write_payload_tarball(cfg, tmp_path / "payload.tar.gz")
    with tarfile.open(payload) as tar:
        member = tar.getmember("etc/ca-appliance/provision.json")
        data = json.loads(tar.extractfile(member).read())
        build = json.loads(tar.extractfile("usr/lib/ca-appliance/build.json").read())
        assert "usr/lib/ca-appliance/ca_appliance/provision.py" in tar.getnames()
    assert member.mode == 0o600
    assert data == {"admin": {"user": "opsadmin", "ssh_authorized_keys": [KEY_1], "password_hash": HASH},
                    "step_cli": True, "extra_units": ["dnf5-automatic.timer"]}
    assert HASH not in json.dumps(build)


def test_fedora_relabel_covers_every_file_the_payload_lays():
    """Files unpacked in Anaconda's chroot carry no SELinux label: restorecon must reach each one."""
    payload = write_payload_tarball(load_config(), Path(os.environ.get("TMPDIR", "/tmp")) / "relabel-payload.tar.gz")
    try:
        with tarfile.open(payload) as tar:
            files = [m.name for m in tar.getmembers() if m.isfile()]
    finally:
        payload.unlink()
    uncovered = [f for f in files if not any(f == p or f.startswith(p + "/") for p in provision.RELABEL_PATHS)]
    assert files and uncovered == []
