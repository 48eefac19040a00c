"""image.disk on real loop devices, mounts and file systems: every one is released, whatever happens;
and the protective MBR read from real sfdisk- and parted-made disk images (no root needed)."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from image import disk
from image.errors import StepFailed
from image.runner import Runner

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root")

MIB = 1 << 20


@pytest.fixture
def runner(tmp_path):
    return Runner(tmp_path / "log" / "disk.log")


def loops_on(path: Path) -> list[str]:
    return disk.loops_backed_by(path.parent) if path.exists() else []


def small_disk(tmp_path, runner, size=256 * MIB):
    raw = tmp_path / "disk.raw"
    layout = disk.create_disk(raw, size, runner)
    return raw, layout.root


@needs_root
def test_create_disk_writes_a_gpt_with_bios_boot_esp_and_root_filling_the_rest(tmp_path, runner):
    raw = tmp_path / "disk.raw"
    layout = disk.create_disk(raw, 256 * MIB, runner)
    assert layout.bios_boot == disk.Partition(MIB, MIB, disk.BIOS_BOOT_TYPE)
    assert layout.esp == disk.Partition(2 * MIB, 126 * MIB, disk.ESP_TYPE)
    # the root fills the disk up to the GPT backup header (sfdisk keeps its end 1 MiB-aligned)
    assert layout.root.offset == 128 * MIB and layout.root.type == disk.LINUX_FS_TYPE
    assert 255 * MIB <= layout.root.offset + layout.root.size <= 256 * MIB - 33 * 512
    assert layout.root.size % 4096 == 0
    assert raw.stat().st_size == 256 * MIB
    assert raw.stat().st_blocks * 512 < 4 * MIB   # sparse
    table = subprocess.run(["sfdisk", "--dump", raw], capture_output=True, text=True, check=True).stdout
    assert "label: gpt" in table
    assert table.count("type=") == 3 and 'name="root"' in table


@needs_root
def test_create_disk_refuses_a_disk_too_small_for_the_root(tmp_path, runner):
    with pytest.raises(StepFailed, match="too small"):
        disk.create_disk(tmp_path / "disk.raw", 100 * MIB, runner)


@needs_root
def test_ext4_made_from_a_directory_keeps_owners_modes_and_content(tmp_path, runner):
    raw, part = small_disk(tmp_path, runner)
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "secret").write_text("s3cret\n")
    os.chmod(tree / "etc" / "secret", 0o600)
    os.chown(tree / "etc" / "secret", 1234, 2345)
    disk.make_ext4_from_dir(raw, part, tree, uuid="0b1c2d3e-1111-2222-3333-444455556666", label="root",
                            runner=runner)
    with disk.loop_device(raw, runner, offset=part.offset, size=part.size, read_only=True) as dev:
        blkid = subprocess.run(["blkid", "-o", "export", dev], capture_output=True, text=True).stdout
        with disk.mounted(dev, tmp_path / "mnt", runner, options="ro,noload") as mnt:
            st = os.stat(mnt / "etc" / "secret")
            assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 1234, 2345)
            assert (mnt / "etc" / "secret").read_text() == "s3cret\n"
    assert "UUID=0b1c2d3e-1111-2222-3333-444455556666" in blkid and "TYPE=ext4" in blkid
    assert loops_on(raw) == [] and disk.mounts_under(tmp_path) == []


@needs_root
def test_loop_device_and_mount_are_released_when_the_body_raises(tmp_path, runner):
    raw, part = small_disk(tmp_path, runner)
    tree = tmp_path / "tree"
    tree.mkdir()
    disk.make_ext4_from_dir(raw, part, tree, uuid="0b1c2d3e-1111-2222-3333-444455556667", label="root",
                            runner=runner)
    for interruption in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(interruption)):
            with disk.loop_device(raw, runner, offset=part.offset, size=part.size) as dev, \
                    disk.mounted(dev, tmp_path / "mnt", runner):
                assert disk.mounts_under(tmp_path) == [tmp_path / "mnt"]
                assert len(loops_on(raw)) == 1
                raise interruption
        assert disk.mounts_under(tmp_path) == []
        assert loops_on(raw) == []


@needs_root
@pytest.mark.skipif(not Path("/usr/lib/grub/x86_64-efi/modinfo.sh").exists(),
                    reason="GRUB's UEFI modules are not installed (apt-get install grub-efi-amd64-bin)")
def test_grub_install_boots_both_firmwares_and_finds_the_root_by_uuid(tmp_path, runner):
    raw = tmp_path / "disk.raw"
    layout = disk.create_disk(raw, 256 * MIB, runner)
    tree = tmp_path / "tree"
    (tree / "boot" / "grub").mkdir(parents=True)
    (tree / "boot" / "grub" / "grub.cfg").write_text("# ours\n")
    uuid = "0b1c2d3e-1111-2222-3333-444455556668"
    disk.make_ext4_from_dir(raw, layout.root, tree, uuid=uuid, label="root", runner=runner)
    disk.install_grub(raw, layout, tmp_path, runner)
    with open(raw, "rb") as f:
        mbr = f.read(512)
        f.seek(layout.bios_boot.offset)
        bios_boot = f.read(layout.bios_boot.size)
    assert mbr[510:512] == b"\x55\xaa" and b"GRUB" in mbr
    assert disk.protective_mbr_boot_flag(raw) is False   # grub-install's boot code leaves the flag alone
    assert bios_boot.strip(b"\0"), "BIOS: no core image embedded in the BIOS boot partition"
    with disk.loop_device(raw, runner, offset=layout.root.offset, size=layout.root.size, read_only=True) as dev, \
            disk.mounted(dev, tmp_path / "mnt", runner, options="ro,noload") as mnt:
        assert (mnt / "boot/grub/grub.cfg").read_text() == "# ours\n"   # ours, not grub-mkconfig's
        load_cfg = (mnt / "boot/grub/i386-pc/load.cfg").read_text()
        assert f"search.fs_uuid {uuid}" in load_cfg    # found by UUID, whatever the disk is called
        assert (mnt / "boot/grub/x86_64-efi/normal.mod").is_file()
    with disk.loop_device(raw, runner, offset=layout.esp.offset, size=layout.esp.size, read_only=True) as dev:
        blkid = subprocess.run(["blkid", "-o", "export", dev], capture_output=True, text=True).stdout
        # read with mtools: the kernel may have no vfat
        subprocess.run(["mcopy", "-i", dev, "::/EFI/BOOT/BOOTX64.EFI", tmp_path / "BOOTX64.EFI"], check=True,
                       env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
        efi = (tmp_path / "BOOTX64.EFI").read_bytes()
    assert "TYPE=vfat" in blkid and "SEC_TYPE" not in blkid   # FAT32, not FAT12/16
    assert efi[:2] == b"MZ"                                     # a PE image the firmware can start
    assert uuid.encode() in efi    # the UEFI core image searches the same root by UUID
    assert loops_on(raw) == [] and disk.mounts_under(tmp_path) == []


@needs_root
def test_grub_install_releases_everything_when_grub_install_fails(tmp_path, runner, monkeypatch):
    raw = tmp_path / "disk.raw"
    layout = disk.create_disk(raw, 256 * MIB, runner)
    tree = tmp_path / "tree"
    tree.mkdir()
    disk.make_ext4_from_dir(raw, layout.root, tree, uuid="0b1c2d3e-1111-2222-3333-44445555666a", label="root",
                            runner=runner)
    real_run = runner.run

    def failing_grub(cmd, **kw):
        if cmd[0] == "grub-install":
            cmd = ["false"]
        return real_run(cmd, **kw)

    monkeypatch.setattr(runner, "run", failing_grub)
    with pytest.raises(StepFailed):
        disk.install_grub(raw, layout, tmp_path, runner)
    assert loops_on(raw) == [] and disk.mounts_under(tmp_path) == []


@needs_root
def test_release_stale_frees_what_a_killed_run_left_and_remove_tree_then_deletes(tmp_path, runner):
    work = tmp_path / "work"
    work.mkdir()
    raw, part = small_disk(work, runner)
    tree = tmp_path / "tree"
    tree.mkdir()
    disk.make_ext4_from_dir(raw, part, tree, uuid="0b1c2d3e-1111-2222-3333-444455556669", label="root",
                            runner=runner)
    # what a kill -9 leaves: an attached device and a mount nobody will release
    dev = subprocess.run(["losetup", "-f", "--show", "-o", str(part.offset), "--sizelimit", str(part.size), raw],
                         capture_output=True, text=True, check=True).stdout.strip()
    (work / "mnt").mkdir()
    subprocess.run(["mount", dev, work / "mnt"], check=True)
    try:
        disk.remove_tree(work, runner)
        assert not work.exists()
        assert disk.mounts_under(tmp_path) == []
        assert disk.loops_backed_by(tmp_path) == []
    finally:   # the test itself must not leak either
        subprocess.run(["umount", work / "mnt"], capture_output=True)
        subprocess.run(["losetup", "-d", dev], capture_output=True)


@needs_root
def test_remove_tree_refuses_a_tree_with_a_mount_it_cannot_release(tmp_path, runner, monkeypatch):
    work = tmp_path / "work"
    (work / "proc").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", work / "proc"], check=True)
    try:
        monkeypatch.setattr(disk, "release_stale", lambda directory, runner: None)
        with pytest.raises(StepFailed, match="still mounted"):
            disk.remove_tree(work, runner)
        assert (work / "proc").is_dir()
    finally:
        subprocess.run(["umount", work / "proc"], check=True)


# --- the protective MBR's boot flag (no root: plain files, sfdisk and parted work on them)


def gpt_image(path: Path) -> Path:
    """A raw file partitioned by sfdisk with the appliance's own GPT layout script."""
    with open(path, "wb") as f:
        f.truncate(256 * MIB)
    subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(path)],
                   input=disk.partition_script(), text=True, check=True, capture_output=True)
    return path


def test_the_debian_layout_made_by_sfdisk_has_a_protective_mbr_without_the_boot_flag(tmp_path):
    raw = gpt_image(tmp_path / "disk.raw")
    assert disk.protective_mbr_boot_flag(raw) is False
    sector = raw.read_bytes()[:512]
    assert sector[446 + 4] == 0xEE and sector[446] == 0x00   # what the function read, by hand


@pytest.mark.skipif(shutil.which("parted") is None, reason="parted is not installed (host-packages.txt)")
def test_the_boot_flag_parted_sets_is_seen_and_its_clearing_too(tmp_path):
    raw = gpt_image(tmp_path / "disk.raw")
    subprocess.run(["parted", "--script", str(raw), "disk_set", "pmbr_boot", "on"], check=True)
    assert disk.protective_mbr_boot_flag(raw) is True      # what blivet leaves after a BIOS install
    subprocess.run(["parted", "--script", str(raw), "disk_set", "pmbr_boot", "off"], check=True)
    assert disk.protective_mbr_boot_flag(raw) is False     # what Fedora's kickstarts (and ours) do


def test_a_disk_without_a_protective_mbr_is_a_failed_check_not_a_silent_pass(tmp_path):
    blank = tmp_path / "blank.raw"
    blank.write_bytes(bytes(4096))
    with pytest.raises(StepFailed, match="no MBR"):
        disk.protective_mbr_boot_flag(blank)
    dos = tmp_path / "dos.raw"
    with open(dos, "wb") as f:
        f.truncate(64 * MIB)
    subprocess.run(["sfdisk", "--quiet", str(dos)], input="label: dos\nstart=2048, type=83, bootable\n", text=True,
                   check=True, capture_output=True)
    with pytest.raises(StepFailed, match="no protective MBR entry"):
        disk.protective_mbr_boot_flag(dos)
    with pytest.raises(StepFailed, match="missing.raw"):
        disk.protective_mbr_boot_flag(tmp_path / "missing.raw")
