"""The base-tree cache: what its key covers (a change to any input makes a new key, the machine's
paths do not), and its integrity rules (a partial, corrupt, stale or unlisted entry is never used;
only the newest entries are kept)."""
import json
import os
import time
from pathlib import Path

import pytest

from image import cache as cache_mod
from image.bases import debian
from image.cache import TreeCache, cache_key
from image.config import load_config


def cfg_with(**debian_section):
    return load_config(overrides={"image": {"base": "debian"}, "debian": debian_section})


def key_of(cfg, debs=(), version="mmdebstrap 1.3.5"):
    return cache_key(debian.base_tree_inputs(cfg, list(debs), version))


def test_same_inputs_same_key_whatever_the_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv("CA_APPLIANCE_CACHE", str(tmp_path / "a"))
    first = key_of(cfg_with())
    monkeypatch.setenv("CA_APPLIANCE_CACHE", str(tmp_path / "b"))
    assert key_of(cfg_with()) == first


@pytest.mark.parametrize("change", [
    {"suite": "bookworm"},
    {"mirror": "http://mirror.lab.example/debian"},
])
def test_suite_and_mirror_are_in_the_key(change):
    assert key_of(cfg_with(**change)) != key_of(cfg_with())


def test_package_list_excludes_hooks_and_mmdebstrap_version_are_in_the_key(monkeypatch):
    base = key_of(cfg_with())
    assert key_of(cfg_with(), version="mmdebstrap 1.4.0") != base
    monkeypatch.setattr(debian, "PACKAGES", debian.PACKAGES + ("vim",))
    assert key_of(cfg_with()) != base
    monkeypatch.undo()
    monkeypatch.setattr(debian, "DPKG_EXCLUDES", debian.DPKG_EXCLUDES + ("path-exclude=/usr/share/zoneinfo/*",))
    assert key_of(cfg_with()) != base
    monkeypatch.undo()
    monkeypatch.setattr(debian, "KERNEL_CMDLINE", "quiet")   # a configure-time fact: not in the key
    assert key_of(cfg_with()) == base


def test_local_debs_are_keyed_by_content_not_path(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    (one / "step-ca_1_amd64.deb").write_bytes(b"deb v1")
    (two / "step-ca_1_amd64.deb").write_bytes(b"deb v1")
    assert key_of(cfg_with(), [one / "step-ca_1_amd64.deb"]) == key_of(cfg_with(), [two / "step-ca_1_amd64.deb"])
    (two / "step-ca_1_amd64.deb").write_bytes(b"deb v2")
    assert key_of(cfg_with(), [one / "step-ca_1_amd64.deb"]) != key_of(cfg_with(), [two / "step-ca_1_amd64.deb"])
    assert key_of(cfg_with(), [one / "step-ca_1_amd64.deb"]) != key_of(cfg_with())


def _copy_tree(src: Path, dest: Path):
    for path in src.rglob("*"):
        if path.is_file():
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
            os.chmod(target, os.stat(path).st_mode)


def test_bootstrap_files_and_slimming_rules_are_in_the_key_the_rest_of_the_base_files_not(tmp_path, monkeypatch):
    files, slim = tmp_path / "files", tmp_path / "slim"
    _copy_tree(debian.FILES_DIR, files)
    _copy_tree(debian.SLIM_DIR, slim)
    monkeypatch.setattr(debian, "FILES_DIR", files)
    monkeypatch.setattr(debian, "SLIM_DIR", slim)
    base = key_of(cfg_with())
    (files / "etc/default/grub.d/ca-appliance.cfg").write_text("GRUB_TIMEOUT=5\n")   # laid in at configure
    assert key_of(cfg_with()) == base
    conf = files / "etc/initramfs-tools/conf.d/ca-appliance-fstype"   # synced in before the kernel
    conf.write_text(conf.read_text() + "# changed\n")
    changed_hook = key_of(cfg_with())
    assert changed_hook != base
    os.chmod(conf, 0o755)   # a mode is part of the tree too
    assert key_of(cfg_with()) != changed_hook
    drivers = tmp_path / "initramfs-drivers.txt"   # the drivers slimming must keep
    drivers.write_text(debian.DRIVER_LIST.read_text() + "nvme\n")
    monkeypatch.setattr(debian, "DRIVER_LIST", drivers)
    assert key_of(cfg_with()) not in (base, changed_hook)
    (slim / "modules-to-drop.txt").write_text("sound\n")
    assert key_of(cfg_with()) not in (base, changed_hook)


def test_the_import_targets_drivers_are_required_after_slimming():
    assert {"mptspi", "mptsas", "vmw_pvscsi", "vmxnet3", "ahci", "e1000", "virtio_blk", "ext4",
            "sym53c8xx"} <= set(debian.required_modules())


def _fake_tree(moddir: Path, present: list[str], dep_lines: list[str]):
    moddir.mkdir(parents=True)
    for rel in present:
        (moddir / rel).parent.mkdir(parents=True, exist_ok=True)
        (moddir / rel).write_bytes(b"\x7fELF")
    (moddir / "modules.dep").write_text("".join(line + "\n" for line in dep_lines))


def test_slimming_that_loses_a_target_driver_or_its_dependency_fails_the_build(tmp_path, monkeypatch):
    monkeypatch.setattr(debian, "required_modules", lambda: ["vmw_pvscsi", "ext4"])
    moddir = tmp_path / "usr/lib/modules/6.1.0-1-amd64"
    pvscsi = "kernel/drivers/scsi/vmw_pvscsi.ko"
    ext4 = "kernel/fs/ext4/ext4.ko"
    jbd2 = "kernel/fs/jbd2/jbd2.ko"
    _fake_tree(moddir, [pvscsi, ext4, jbd2], [f"{pvscsi}:", f"{ext4}: {jbd2}"])
    debian.check_required_modules(tmp_path)   # all there
    (moddir / jbd2).unlink()
    with pytest.raises(Exception, match="ext4.*jbd2"):
        debian.check_required_modules(tmp_path)
    (moddir / "modules.dep").write_text(f"{ext4}:\n")
    with pytest.raises(Exception, match="vmw_pvscsi.*not in modules.dep"):
        debian.check_required_modules(tmp_path)


def _write(path: Path, data: bytes):
    path.write_bytes(data)


def test_an_entry_is_found_only_when_complete_and_intact(tmp_path):
    cache = TreeCache(tmp_path, keep=3)
    key = "a" * 64
    assert cache.lookup(key) is None
    stored = cache.store(key, lambda p: _write(p, b"tree bytes"))
    assert cache.lookup(key) == stored and stored.read_bytes() == b"tree bytes"
    stored.write_bytes(b"tree bytez")              # corrupted in place, same size
    assert cache.lookup(key) is None
    assert not stored.exists() and not cache.entry(key).meta.exists()


def test_a_tarball_without_its_metadata_is_a_partial_entry_and_is_dropped(tmp_path):
    cache = TreeCache(tmp_path)
    key = "b" * 64
    cache.store(key, lambda p: _write(p, b"tree"))
    cache.entry(key).meta.unlink()                  # killed between the two renames
    assert cache.lookup(key) is None
    assert not cache.entry(key).tarball.exists()


def test_metadata_of_another_key_or_garbage_is_not_trusted(tmp_path):
    cache = TreeCache(tmp_path)
    key = "c" * 64
    cache.store(key, lambda p: _write(p, b"tree"))
    meta = json.loads(cache.entry(key).meta.read_text())
    cache.entry(key).meta.write_text(json.dumps({**meta, "key": "d" * 64}))
    assert cache.lookup(key) is None
    cache.store(key, lambda p: _write(p, b"tree"))
    cache.entry(key).meta.write_text("{not json")
    assert cache.lookup(key) is None


def test_a_failed_write_leaves_no_entry_and_no_partial_file(tmp_path):
    cache = TreeCache(tmp_path)

    def half_written(path):
        path.write_bytes(b"half")
        raise RuntimeError("tar died")

    with pytest.raises(RuntimeError):
        cache.store("e" * 64, half_written)
    assert list(tmp_path.iterdir()) == []


def test_partials_of_dead_builds_are_swept_and_live_ones_kept(tmp_path):
    cache = TreeCache(tmp_path)
    dead = tmp_path / f".{'f' * 64}.999999999.partial"
    live = tmp_path / f".{'f' * 64}.{os.getpid()}.partial"
    dead.write_bytes(b"x"), live.write_bytes(b"x")
    cache.sweep_partials()
    assert not dead.exists() and live.exists()


def test_the_cache_keeps_only_the_newest_entries(tmp_path):
    cache = TreeCache(tmp_path, keep=2)
    keys = [c * 64 for c in "123"]
    for i, key in enumerate(keys):
        cache.store(key, lambda p, i=i: _write(p, f"tree {i}".encode()))
        os.utime(cache.entry(key).meta, (time.time() - 100 + i, time.time() - 100 + i))
    assert cache.lookup(keys[0]) is None            # the oldest went when the third came
    assert cache.lookup(keys[1]) is not None and cache.lookup(keys[2]) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{keys[1]}.json", f"{keys[1]}.tar.zst", f"{keys[2]}.json", f"{keys[2]}.tar.zst"])


def test_a_stale_entry_is_rebuilt(tmp_path):
    cache = TreeCache(tmp_path, max_age_days=7)
    key = "9" * 64
    cache.store(key, lambda p: _write(p, b"tree"))
    meta = json.loads(cache.entry(key).meta.read_text())
    cache.entry(key).meta.write_text(json.dumps({**meta, "created": time.time() - 8 * 86400}))
    assert cache.lookup(key) is None


def test_clean_cache_removes_every_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("CA_APPLIANCE_CACHE", str(tmp_path))
    cache = TreeCache()
    cache.store("7" * 64, lambda p: _write(p, b"tree"))
    assert cache.root == tmp_path / "trees"
    assert cache.clear() > 0 and not cache.root.exists()
    assert cache_mod.TreeCache().lookup("7" * 64) is None
