"""The Debian build's initramfs cache and its reproducible inputs: the key changes with every input of
the initramfs (and with nothing else the payload holds), an entry restores only into a tree whose
kernels it was made for, and the root file system's UUID follows the build's inputs."""
import io
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from image.bases import debian
from image.cache import cache_key
from image.config import load_config
from image.runner import Runner

KVER = "6.12.1-amd64"
PROVISION = "usr/lib/ca-appliance/ca_appliance/provision.py"
DRIVERS = "usr/lib/ca-appliance/initramfs-drivers.txt"
PAYLOAD = {PROVISION: b"def build_initramfs(): ...\n", DRIVERS: b"virtio_blk\n",
           "usr/lib/ca-appliance/ca_appliance/wizard.py": b"# the wizard\n",
           "usr/lib/ca-appliance/defaults.yaml": b"ca: {name: A}\n",
           "etc/systemd/system/step-ca.service": b"[Unit]\n"}


@dataclass
class Binary:
    name: str
    path: str
    kind: str = "binary"


def write_payload(path: Path, files: dict[str, bytes], modes: dict[str, int] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), (modes or {}).get(name, 0o644), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def tree(tmp_path) -> Path:
    """A laid tree as far as the initramfs is concerned: kernel, its image, the configuration."""
    root = tmp_path / "rootfs"
    (root / "boot").mkdir(parents=True)
    (root / f"boot/vmlinuz-{KVER}").write_bytes(b"kernel")
    os.utime(root / f"boot/vmlinuz-{KVER}", (1_795_000_000, 1_795_000_000))
    (root / f"boot/initrd.img-{KVER}").write_bytes(b"the base tree's initramfs")
    (root / debian.UPDATE_INITRAMFS_CONF).parent.mkdir(parents=True)
    (root / debian.UPDATE_INITRAMFS_CONF).write_text("update_initramfs=yes\nbackup_initramfs=no\n")
    debian.lay_base_files(root)   # conf.d/ca-appliance-fstype: FSTYPE=ext4
    (root / "etc/fstab").write_text(debian.fstab_text("11111111-2222-3333-4444-555555555555"))
    return root


@pytest.fixture
def step_ca(tmp_path) -> Binary:
    path = tmp_path / "step-ca"
    path.write_bytes(b"step-ca 0.30.2")
    return Binary("step-ca", str(path))


def key(tree, payload, artifacts, base_key="b" * 64):
    return cache_key(debian.initramfs_inputs(base_key, tree, payload, artifacts))


def test_the_initramfs_key_changes_with_each_of_its_inputs(tree, tmp_path, step_ca, monkeypatch):
    payload = write_payload(tmp_path / "p.tar.gz", PAYLOAD)
    first = key(tree, payload, [step_ca])
    assert key(tree, payload, [step_ca]) == first   # stable

    assert key(tree, payload, [step_ca], base_key="c" * 64) != first   # kernel, modules, every package file
    changes = {
        "the code that writes the driver hook": {PROVISION: b"def build_initramfs(): changed\n"},
        "the driver list": {DRIVERS: b"virtio_blk\nvmxnet3\n"},
        "a modprobe option in the payload": {"etc/modprobe.d/x.conf": b"options y z=1\n"},
        "a modprobe file by the merged-/usr path": {"lib/modprobe.d/x.conf": b"blacklist y\n"},
        "an initramfs hook in the payload": {"etc/initramfs-tools/hooks/extra": b"#!/bin/sh\n"},
        "a udev rule in the payload": {"usr/lib/udev/rules.d/99-x.rules": b"# x\n"},
        "a program a hook may copy": {"usr/sbin/fsck.x": b"binary"},
    }
    for what, files in changes.items():
        changed = write_payload(tmp_path / "changed.tar.gz", {**PAYLOAD, **files})
        assert key(tree, changed, [step_ca]) != first, what
    executable = write_payload(tmp_path / "mode.tar.gz", PAYLOAD, {DRIVERS: 0o755})
    assert key(tree, executable, [step_ca]) != first, "a member's mode"

    step_ca_v2 = tmp_path / "step-ca-2"
    step_ca_v2.write_bytes(b"step-ca 0.30.3")
    assert key(tree, payload, [Binary("step-ca", str(step_ca_v2))]) != first, "the binaries laid in /usr/bin"

    (tree / debian.UPDATE_INITRAMFS_CONF).write_text("update_initramfs=yes\nbackup_initramfs=yes\n")
    assert key(tree, payload, [step_ca]) != first, "update-initramfs.conf"
    (tree / debian.UPDATE_INITRAMFS_CONF).write_text("update_initramfs=yes\nbackup_initramfs=no\n")
    assert key(tree, payload, [step_ca]) == first

    os.utime(tree / f"boot/vmlinuz-{KVER}", (1_796_000_000, 1_796_000_000))
    assert key(tree, payload, [step_ca]) != first, "SOURCE_DATE_EPOCH (the kernel's date)"
    os.utime(tree / f"boot/vmlinuz-{KVER}", (1_795_000_000, 1_795_000_000))

    files = tmp_path / "base-files"
    shutil.copytree(debian.FILES_DIR, files)
    (files / "etc/modprobe.d/ca-appliance.conf").write_text("blacklist floppy\nblacklist pcspkr\n")
    monkeypatch.setattr(debian, "FILES_DIR", files)
    assert key(tree, payload, [step_ca]) != first, "the base's own files"


def test_the_initramfs_key_ignores_the_rest_of_the_payload(tree, tmp_path, step_ca):
    """What an overlay-only change edits: the guest program, the defaults, units."""
    first = key(tree, write_payload(tmp_path / "a.tar.gz", PAYLOAD), [step_ca])
    edited = {**PAYLOAD, "usr/lib/ca-appliance/ca_appliance/wizard.py": b"# the wizard, edited\n",
              "usr/lib/ca-appliance/defaults.yaml": b"ca: {name: B}\n",
              "etc/systemd/system/step-ca.service": b"[Unit]\nDescription=x\n",
              "usr/lib/ca-appliance/ca_appliance/new.py": b"# new\n"}
    assert key(tree, write_payload(tmp_path / "b.tar.gz", edited), [step_ca]) == first


def test_the_fstab_is_an_input_only_when_the_fsck_hook_reads_it(tree, tmp_path, step_ca):
    payload = write_payload(tmp_path / "p.tar.gz", PAYLOAD)
    first = key(tree, payload, [step_ca])
    (tree / "etc/fstab").write_text(debian.fstab_text("99999999-2222-3333-4444-555555555555"))
    assert key(tree, payload, [step_ca]) == first, "FSTYPE=ext4 is pinned: the root UUID is no input"
    (tree / "etc/initramfs-tools/conf.d/ca-appliance-fstype").write_text("FSTYPE=auto\n")
    pinned_off = key(tree, payload, [step_ca])
    (tree / "etc/fstab").write_text(debian.fstab_text("11111111-2222-3333-4444-555555555555"))
    assert key(tree, payload, [step_ca]) != pinned_off, "FSTYPE=auto: the hook reads the fstab"


def test_the_update_initramfs_override_skips_or_makes_it_reproducible(tree, tmp_path):
    cached = debian.initramfs_conf_override(tree, tmp_path, cached=True).read_text()
    assert cached.startswith("update_initramfs=yes\nbackup_initramfs=no\n")
    assert cached.rstrip().endswith("update_initramfs=no")   # sourced last: it wins
    fresh = debian.initramfs_conf_override(tree, tmp_path, cached=False).read_text()
    assert "SOURCE_DATE_EPOCH=1795000000\nexport SOURCE_DATE_EPOCH\n" in fresh and "update_initramfs=no" not in fresh
    # the tree's own file is never changed: the override is bind-mounted for provision's run only
    assert (tree / debian.UPDATE_INITRAMFS_CONF).read_text() == "update_initramfs=yes\nbackup_initramfs=no\n"
    cmd = debian.provision_command(tree, tmp_path / "update-initramfs.conf")
    script = cmd[cmd.index("-c") + 1]
    assert cmd[-2:] == [str(tmp_path / "update-initramfs.conf"), str(tree)]
    assert 'mount --bind "$initramfs_conf" "$root/etc/initramfs-tools/update-initramfs.conf"' in script
    assert cmd[:5] == ["unshare", "--mount", "--propagation", "private", "--"]


def test_a_cached_initramfs_is_restored_only_into_a_tree_with_the_same_kernels(tree, tmp_path):
    runner = Runner(tmp_path / "log")
    (tree / f"boot/initrd.img-{KVER}").write_bytes(b"the provisioned initramfs")
    entry = tmp_path / "entry.tar.zst"
    debian.pack_initramfs(tree, entry, runner)
    (tree / f"boot/initrd.img-{KVER}").write_bytes(b"the base tree's initramfs")
    assert debian.restore_initramfs(entry, tree, runner)
    assert (tree / f"boot/initrd.img-{KVER}").read_bytes() == b"the provisioned initramfs"

    other = tmp_path / "other"
    (other / "boot").mkdir(parents=True)
    (other / "boot/initrd.img-6.13.0-amd64").write_bytes(b"another kernel's")
    assert not debian.restore_initramfs(entry, other, runner)
    assert sorted(p.name for p in (other / "boot").iterdir()) == ["initrd.img-6.13.0-amd64"]


def test_the_root_uuid_follows_the_inputs_of_the_image(tmp_path, step_ca):
    cfg = load_config(overrides={"image": {"base": "debian"}})
    payload = write_payload(tmp_path / "p.tar.gz", PAYLOAD)
    first = debian.root_fs_uuid("b" * 64, cfg, payload, [step_ca])
    assert debian.root_fs_uuid("b" * 64, cfg, payload, [step_ca]) == first
    assert debian.root_fs_uuid("c" * 64, cfg, payload, [step_ca]) != first
    other_cfg = load_config(overrides={"image": {"base": "debian"}, "ca": {"name": "Other CA"}})
    assert debian.root_fs_uuid("b" * 64, other_cfg, payload, [step_ca]) != first
    changed = write_payload(tmp_path / "q.tar.gz", {**PAYLOAD, "usr/lib/ca-appliance/defaults.yaml": b"x\n"})
    assert debian.root_fs_uuid("b" * 64, cfg, changed, [step_ca]) != first
    step_ca_v2 = tmp_path / "step-ca-2"
    step_ca_v2.write_bytes(b"step-ca 0.30.3")
    assert debian.root_fs_uuid("b" * 64, cfg, payload, [Binary("step-ca", str(step_ca_v2))]) != first


def test_an_entry_is_used_while_its_digest_is_checked_and_a_wrong_one_is_refused_and_deleted(tmp_path):
    from image.cache import TreeCache
    cache = TreeCache(tmp_path / "cache")
    cache.store("k" * 64, lambda path: path.write_bytes(b"a tree" * 1000))
    seen = []
    assert cache.use("k" * 64, lambda tarball: seen.append(tarball.read_bytes()))
    assert seen == [b"a tree" * 1000]

    entry = cache.entry("k" * 64)
    entry.tarball.write_bytes(b"b tree" * 1000)   # same size, other bytes: only the digest tells
    seen.clear()
    assert not cache.use("k" * 64, lambda tarball: seen.append(tarball.read_bytes()))
    assert seen == [b"b tree" * 1000], "consumed before the check ended: the caller must throw it away"
    assert not entry.tarball.exists() and not entry.meta.exists(), "a wrong entry is deleted"

    assert not cache.use("k" * 64, seen.append) and len(seen) == 1, "no entry: nothing consumed"


def test_the_work_tree_is_a_tmpfs_when_memory_allows_and_always_goes_away(tmp_path, monkeypatch):
    from image import disk
    runner = Runner(tmp_path / "log")
    monkeypatch.setattr(debian, "mem_available", lambda: debian.TMPFS_MIN_AVAILABLE - 1)
    on_disk = tmp_path / "on-disk"
    assert not debian.make_work_tree(on_disk, runner)
    assert on_disk.is_dir() and not os.path.ismount(on_disk)
    debian.drop_work_tree(on_disk, runner)
    assert not on_disk.exists()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    monkeypatch.setattr(debian, "mem_available", lambda: debian.TMPFS_MIN_AVAILABLE)
    in_ram = tmp_path / "in-ram"
    assert debian.make_work_tree(in_ram, runner)
    try:
        assert os.path.ismount(in_ram) and os.listdir(in_ram) == []   # mmdebstrap wants it empty
        (in_ram / "etc").mkdir()
    finally:
        debian.drop_work_tree(in_ram, runner)
    assert not in_ram.exists() and disk.mounts_under(tmp_path) == []
    assert "left over" not in (tmp_path / "log").read_text()
