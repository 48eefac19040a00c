"""The Debian appliance image CI builds, inspected read-only: what a user importing it relies on.

Slow on first run: the session builds the image once (tests/image_fixture.py).
"""
import hashlib
import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ENABLED_UNITS = (
    "step-ca.service", "ca-appliance-firstboot.service", "ca-appliance-growroot.service",
    "ca-appliance-ssh-hostkeys.service", "ca-appliance-recover.service", "NetworkManager.service",
    "firewalld.service", "ssh.service",
    "chrony.service", "serial-getty@ttyS0.service",
    "ca-appliance-page.socket",
)
# every OVA target's disk controller and NIC: QEMU virtio, VMware LSI Logic/PVSCSI/e1000/vmxnet3, AHCI
INITRAMFS_DRIVERS = ("virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net", "e1000", "vmxnet3",
                     "mptspi", "vmw_pvscsi", "ahci")
# a PEM private key block with its base64 body (programs that parse keys carry the bare header)
PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----\r?\n(Proc-Type:[^\n]*\n)?"
                             rb"(DEK-Info:[^\n]*\n)?\s*[A-Za-z0-9+/=]{40}")


def initramfs_drivers(image_root: Path) -> set[str]:
    """The drivers the early boot has: modules in the initramfs, and those built into the kernel
    (modules.builtin: trixie's kernel builds virtio_pci in, bookworm's ships it as a module)."""
    (initrd,) = (image_root / "boot").glob("initrd.img-*")
    listing = subprocess.run(["lsinitramfs", str(initrd)], capture_output=True, text=True, check=True).stdout
    modules = {re.sub(r"\.ko(\.(xz|zst|gz))?$", "", Path(p).name) for p in listing.split() if ".ko" in p}
    for builtin in image_root.glob("usr/lib/modules/*/modules.builtin"):
        modules |= {Path(line.strip()).name.removesuffix(".ko") for line in builtin.read_text().splitlines()}
    return modules


def passwd_entries(root: Path, name: str) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in (root / "etc" / name).read_text().splitlines()}


def test_qemu_img_check_is_clean_and_sums_match(debian_image, debian_dist):
    subprocess.run(["qemu-img", "check", "-f", "qcow2", str(debian_image)], check=True, capture_output=True)
    sums = dict(reversed(line.split("  ", 1)) for line in (debian_dist / "SHA256SUMS").read_text().splitlines())
    digest = subprocess.run(["sha256sum", str(debian_image)], capture_output=True, text=True,
                            check=True).stdout.split()[0]
    assert sums[debian_image.name] == digest


def test_manifest_records_config_base_packages_and_step_ca(manifest, debian_image):
    assert manifest["base"] == "debian" and manifest["release"].startswith("Debian 13")
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["config_digest"])
    packages = dict(p.split(" ", 1) for p in manifest["packages"])
    for needed in ("linux-image-amd64", "systemd", "network-manager", "firewalld", "openssh-server", "chrony",
                   "python3-cryptography", "python3-jwcrypto", "python3-yaml", "qemu-guest-agent",
                   "open-vm-tools", "grub-pc", "cloud-guest-utils", "sudo"):
        assert needed in packages, needed
    assert "systemd-timesyncd" not in packages   # chrony keeps the time
    assert manifest["step_ca"]["kind"] == "binary" and re.fullmatch(r"[0-9a-f]{64}", manifest["step_ca"]["sha256"])
    assert manifest["step_cli"]["kind"] == "binary" and re.fullmatch(r"[0-9a-f]{64}", manifest["step_cli"]["sha256"])
    assert manifest["build_seconds"] > 0 and debian_image.name in manifest["outputs"]
    steps = manifest["build_steps"]   # the build profile: each step the log names, with its seconds
    assert any(name.startswith("debian: bootstrap") for name in steps)
    assert "payload: overlay and generated files" in steps
    assert all(seconds >= 0 for seconds in steps.values()) and sum(steps.values()) <= manifest["build_seconds"] + 1


@pytest.mark.parametrize("unit", ENABLED_UNITS)
def test_unit_is_enabled(image_root, unit):
    result = subprocess.run(["systemctl", f"--root={image_root}", "is-enabled", unit],
                            capture_output=True, text=True)
    assert result.stdout.strip() == "enabled", f"{unit}: {result.stdout.strip()} {result.stderr.strip()}"


def test_the_build_provisioned_the_rootfs_with_the_guest_program(debian_image):
    """The Debian build runs the same `ca-appliance provision` the Fedora kickstart's %post runs."""
    from image_fixture import latest_build_log
    log = latest_build_log(debian_image)
    if log is None:
        pytest.skip("the test image was reused from an earlier session whose build log is gone")
    text = log.read_text(errors="replace")
    assert "/usr/bin/ca-appliance provision --base debian" in text
    assert "ca-appliance provision --base debian\n" in text and "provision: done" in text
    assert "initramfs (initramfs-tools)" in text
    assert "TEST IMAGE" not in text   # CI builds what users get


def test_ci_builds_the_step_ca_users_get_and_it_is_no_test_image(manifest, image_root):
    """The pinned step-ca (appliance.yaml) built from its Go module: the manifest, build.json and the
    binary itself say that version, and the image is not a test image."""
    import json
    import subprocess

    from image.config import load_config
    pinned = load_config().artifacts
    assert manifest["step_ca_version"] == pinned.step_ca.version and manifest["test_only"] is False
    build = json.loads((image_root / "usr/lib/ca-appliance/build.json").read_text())
    assert (build["step_ca_version"], build["test_only"]) == (pinned.step_ca.version, False)
    said = subprocess.run([image_root / "usr/bin/step-ca", "version"], capture_output=True, text=True).stdout
    assert said.startswith(f"Smallstep CA/{pinned.step_ca.version} ")
    said = subprocess.run([image_root / "usr/bin/step", "version"], capture_output=True, text=True).stdout
    assert said.startswith(f"Smallstep CLI/{pinned.step_cli.version} ")
    assert not (image_root / "etc/ca-appliance/provision.json").exists()   # applied, then removed


def test_only_ssh_and_the_ca_are_open_in_the_default_zone(image_root):
    conf = (image_root / "etc/firewalld/firewalld.conf").read_text()
    assert re.search(r"^DefaultZone=ca-appliance$", conf, re.M)
    zone = (image_root / "etc/firewalld/zones/ca-appliance.xml").read_text()
    assert re.findall(r'<service name="([^"]+)"/>', zone) == ["ssh", "step-ca", "dhcpv6-client"]
    assert "<port" not in zone


def test_step_user_is_a_system_user_without_login(image_root):
    step = passwd_entries(image_root, "passwd")["step"]
    assert int(step[2]) < 1000 and step[5] == "/var/lib/step-ca" and step[6] == "/usr/sbin/nologin"
    home = os.stat(image_root / "var/lib/step-ca")
    assert home.st_uid == int(step[2]) and stat.S_IMODE(home.st_mode) & 0o007 == 0


def test_root_is_locked_and_the_admin_has_sudo(image_root):
    shadow = passwd_entries(image_root, "shadow")
    assert shadow["root"][1].startswith(("!", "*"))
    admin = passwd_entries(image_root, "passwd")["admin"]
    assert admin[6] == "/bin/bash" and admin[5] == "/home/admin"
    sudo_members = passwd_entries(image_root, "group")["sudo"][3].split(",")
    assert "admin" in sudo_members
    sudoers = image_root / "etc/sudoers.d/ca-appliance-admin"
    assert stat.S_IMODE(os.stat(sudoers).st_mode) == 0o440
    assert re.search(r"^admin ALL=", sudoers.read_text(), re.M)
    ssh_dir = image_root / "home/admin/.ssh"
    assert stat.S_IMODE(os.stat(ssh_dir).st_mode) == 0o700 and os.stat(ssh_dir).st_uid == int(admin[2])
    assert stat.S_IMODE(os.stat(ssh_dir / "authorized_keys").st_mode) == 0o600


def test_step_ca_step_and_the_guest_cli_are_installed_root_owned_and_executable(image_root):
    for path in ("usr/bin/step-ca", "usr/bin/step", "usr/bin/ca-appliance"):
        st = os.stat(image_root / path)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755), path
    assert stat.S_IMODE(os.stat(image_root / "usr/lib/ca-appliance/defaults.yaml").st_mode) == 0o644


def test_guest_cli_runs_on_the_images_own_python(image_root):
    result = subprocess.run(["chroot", str(image_root), "/usr/bin/python3", "/usr/bin/ca-appliance", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "setup" in result.stdout


def shipped_unmodified(root: Path) -> dict[str, str]:
    """{path: md5} of every file a Debian package ships (dpkg's md5sums): the distribution's bytes."""
    shipped = {}
    for sums in (root / "var/lib/dpkg/info").glob("*.md5sums"):
        for line in sums.read_text(errors="replace").splitlines():
            md5, _, path = line.partition("  ")
            shipped["/" + path] = md5
    return shipped


def test_nothing_unique_to_one_appliance_is_baked(image_root):
    assert list((image_root / "etc/ssh").glob("ssh_host_*")) == []
    assert (image_root / "etc/machine-id").read_bytes() == b""
    assert not (image_root / "var/lib/systemd/random-seed").exists()
    # a private key anywhere but in a package's own, unmodified files (GnuTLS carries its self-test
    # keys, for instance) was made or copied by the build: every appliance would share it
    shipped = shipped_unmodified(image_root)
    found = []
    for dirpath, _dirs, files in os.walk(image_root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file() or path.stat().st_size > 4 << 20:
                continue
            data = path.read_bytes()
            if b"PRIVATE KEY-----" in data and PEM_PRIVATE_KEY.search(data):
                inside = "/" + str(path.relative_to(image_root))
                md5 = hashlib.md5(data).hexdigest()
                # merged /usr: a package may list /lib/x as its path for what is /usr/lib/x
                if md5 not in (shipped.get(inside), shipped.get(inside.removeprefix("/usr"))):
                    found.append(inside)
    assert found == []


def test_initramfs_carries_the_drivers_of_every_hypervisor(image_root):
    modules = initramfs_drivers(image_root)
    assert set(INITRAMFS_DRIVERS) <= modules, set(INITRAMFS_DRIVERS) - modules
    (initrd,) = (image_root / "boot").glob("initrd.img-*")
    listing = subprocess.run(["lsinitramfs", str(initrd)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"sbin/fsck\.ext4$", listing, re.M)   # the root file system is checked at boot
    assert re.search(r"^etc/modprobe\.d/ca-appliance\.conf$", listing, re.M)   # no floppy probing


def test_boots_by_uuid_on_serial_and_vga(image_root, root_blkid, raw_image):
    uuid = root_blkid["UUID"]
    assert root_blkid["TYPE"] == "ext4"
    assert re.search(rf"^UUID={uuid}\s+/\s+ext4\s", (image_root / "etc/fstab").read_text(), re.M)
    grub_cfg = (image_root / "boot/grub/grub.cfg").read_text()
    assert f"search --no-floppy --fs-uuid --set=root {uuid}" in grub_cfg
    (linux,) = re.findall(r"^\s*linux\s+(.*)$", grub_cfg, re.M)
    kernel, *args = linux.split()
    assert (image_root / kernel.lstrip("/")).is_file()
    assert f"root=UUID={uuid}" in args and args[-2:] == ["console=tty0", "console=ttyS0,115200n8"]
    assert "panic=10" in args              # a panicked kernel reboots instead of hanging the appliance
    (initrd,) = re.findall(r"^\s*initrd\s+(\S+)$", grub_cfg, re.M)
    assert (image_root / initrd.lstrip("/")).is_file()
    assert (image_root / "boot/grub/i386-pc/normal.mod").is_file()
    with open(raw_image, "rb") as f:
        mbr = f.read(512)
    assert mbr[510:] == b"\x55\xaa" and b"GRUB" in mbr


def test_the_root_file_system_grows_with_the_disk(image_root):
    script = (image_root / "usr/libexec/ca-appliance/growroot").read_text()
    assert "growpart" in script and "resize2fs" in script
    assert (image_root / "usr/bin/growpart").is_file()


def test_image_is_lean(image_root):
    assert list((image_root / "var/cache/apt/archives").glob("*.deb")) == []
    assert [p for p in (image_root / "var/lib/apt/lists").iterdir() if p.is_file()] == []
    assert not any((image_root / "usr/share/man").rglob("*.gz"))
    assert (image_root / "usr/share/doc/openssh-server/copyright").is_file()   # licences stay
    dpkg_options = "".join(p.read_text() for p in (image_root / "etc/dpkg/dpkg.cfg.d").iterdir())
    assert "path-exclude=/usr/share/man/*" in dpkg_options   # upgrades stay lean too
    assert "force-unsafe-io" not in dpkg_options             # but the appliance's dpkg syncs its files


def test_firewalld_and_name_resolution_have_their_base_files(image_root):
    """firewalld refuses to start without /etc/protocols (netbase); localhost must resolve without DNS."""
    assert "tcp" in (image_root / "etc/protocols").read_text()
    hosts = (image_root / "etc/hosts").read_text().split()
    assert hosts[:2] == ["127.0.0.1", "localhost"]


def test_initramfs_has_the_matrix_drivers_and_the_lsi_ones_qemu_cannot_boot(image_root):
    """tests/boot boots each row of image.vm.qemu.HARDWARE; VMware's LSI Logic (mptspi) and LSI SAS
    (mptsas) have no QEMU model, so their modules must at least be in the initramfs."""
    from image.vm.qemu import HARDWARE
    modules = initramfs_drivers(image_root)
    wanted = {"mptspi", "mptsas"} | {d for h in HARDWARE.values() for d in h.guest_drivers}
    assert wanted <= modules, f"missing from the initramfs: {sorted(wanted - modules)}"


def test_the_esp_boots_uefi_by_the_removable_path_and_finds_the_root_by_uuid(raw_image, root_blkid, image_root):
    parts = {p["type"].upper(): p for p in json.loads(subprocess.run(
        ["sfdisk", "--json", str(raw_image)], capture_output=True, text=True, check=True).stdout)
        ["partitiontable"]["partitions"]}
    esp = parts["C12A7328-F81F-11D2-BA4B-00A0C93EC93B"]
    assert "21686148-6449-6E6F-744E-656564454649" in parts    # BIOS boot: GRUB's i386-pc core image
    efi = subprocess.run(["mtype", "-i", f"{raw_image}@@{esp['start'] * 512}", "::/EFI/BOOT/BOOTX64.EFI"],
                         capture_output=True, check=True, env=dict(os.environ, MTOOLS_SKIP_CHECK="1")).stdout
    assert efi[:2] == b"MZ" and root_blkid["UUID"].encode() in efi
    assert (image_root / "boot/grub/x86_64-efi/normal.mod").is_file()
    assert "insmod part_gpt" in (image_root / "boot/grub/grub.cfg").read_text()
