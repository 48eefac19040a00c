"""A rebuild from the caches lays exactly the file tree a cold build of the same inputs lays.

Three real Debian builds, each with its own build and dist directories and one cache of their own
(seeded with the user's downloaded .debs only, so nothing is fetched again):
  1. cold, inputs A (`use_cache=False`, as `invoke build --no-cache`): fills the base-tree and
     initramfs caches;
  2. warm, inputs B: A after an overlay-only change (a guest file and the CA name the payload's
     defaults.yaml carries): the base tree and the initramfs come from the caches of build 1;
  3. cold, inputs B.
The root file systems of 2 and 3 are read through a read-only loop device and mount, and must agree
on every path: its type, mode, owner, group, extended attributes, symlink target, device numbers and
the SHA-256 of its content. A few minutes (two mmdebstrap runs).
"""
import datetime
import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from helpers.images import mounted_root
from image_fixture import debian_test_config

import image.payload
from image import disk
from image.build import build_appliance, output_stem
from image.cache import cache_dir
from image.config import load_config
from image.files import sha256_file

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="a Debian build needs root (mmdebstrap, loop devices)")]

# Paths that may legitimately differ between two builds of the same inputs, each with its reason.
# None: the initramfs is made with SOURCE_DATE_EPOCH, the root UUID (fstab, grub.cfg) derives from
# the inputs, and mmdebstrap removes its logs' time stamps (cleanup/reproducible).
LEGITIMATE_DIFFERENCES: dict[str, str] = {}
# useradd and systemd-sysusers stamp the day of the build into /etc/shadow (its third field): that
# field is compared only when the two builds ran on the same UTC day.
SHADOW_FILES = ("etc/shadow", "etc/shadow-")
OVERLAY_CHANGE = "usr/lib/ca-appliance/ca_appliance/__init__.py"


@pytest.fixture
def configs():
    """Inputs A and B: B is A with another CA name (the payload's defaults.yaml)."""
    base = debian_test_config()   # the pinned step-ca and step (built from their Go modules, cached)
    overrides = {"image": {"base": "debian", "disk_gb": 4, "formats": ["raw"]},
                 "artifacts": {"step_ca": {"path": base.artifacts.step_ca.path},
                               "step_cli": {"path": base.artifacts.step_cli.path}}}
    a = load_config(overrides=overrides)
    b = load_config(overrides={**overrides, "ca": {"name": "Rebuild Equivalence CA"}})
    return a, b


def build(cfg, tmp_path: Path, label: str, *, use_cache: bool) -> tuple[Path, str]:
    """The raw disk and the build's log."""
    build_dir, dist = tmp_path / f"build-{label}", tmp_path / f"dist-{label}"
    build_appliance(cfg, formats=["raw"], dist_dir=dist, build_dir=build_dir, use_cache=use_cache,
                    out=io.StringIO())
    (log,) = (build_dir / "logs").glob("*.log")
    return dist / f"{output_stem(cfg)}.raw", log.read_text(errors="replace")


def run(*cmd):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=True).stdout


def tree_of(raw: Path, mnt: Path) -> dict[str, tuple]:
    """{path: (type, mode, uid, gid, xattrs, symlink target | content digest | device)} of the root
    file system."""
    part = disk.root_partition(raw)
    mnt.mkdir()
    with mounted_root(raw, part.offset, part.size, mnt) as root:
        return walk(root)


def walk(root: Path) -> dict[str, tuple]:
    tree = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                what = sha256_file(Path(path))
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                what = (os.major(st.st_rdev), os.minor(st.st_rdev))
            else:
                what = None
            xattrs = tuple(sorted((k, os.getxattr(path, k, follow_symlinks=False))
                                  for k in os.listxattr(path, follow_symlinks=False)))
            tree[os.path.relpath(path, root)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                                                 st.st_gid, xattrs, what)
    return tree


def shadow_without_dates(raw: Path, mnt: Path, rel: str) -> list[list[str]]:
    part = disk.root_partition(raw)
    mnt.mkdir()
    with mounted_root(raw, part.offset, part.size, mnt) as root:
        lines = (root / rel).read_text().splitlines()
    return [line.split(":")[:2] + line.split(":")[3:] for line in lines]


@pytest.fixture
def own_cache(configs, tmp_path, monkeypatch):
    """A cache of this test's own, with the user's downloaded .debs (mmdebstrap fetches none again);
    after `configs`, which finds the pinned step-ca and step in the user's cache."""
    cache = tmp_path / "cache"
    cache.mkdir()
    debs = cache_dir() / "debian"
    if debs.is_dir():
        shutil.copytree(debs, cache / "debian", symlinks=True)
    monkeypatch.setenv("CA_APPLIANCE_CACHE", str(cache))
    return cache


@pytest.fixture
def changed_overlay(tmp_path):
    """A copy of overlay/ with one guest file changed: what an edit of the overlay does."""
    copy = tmp_path / "overlay"
    shutil.copytree(image.payload.OVERLAY_DIR, copy, symlinks=True)
    with open(copy / OVERLAY_CHANGE, "a") as f:
        f.write("# an overlay-only change (tests/image/test_rebuild_equivalence.py)\n")
    return copy


def test_a_warm_rebuild_after_an_overlay_change_lays_the_tree_a_cold_build_lays(tmp_path, configs, own_cache,
                                                                                   changed_overlay, monkeypatch):
    cfg_a, cfg_b = configs
    day = datetime.datetime.now(datetime.UTC).date()
    build(cfg_a, tmp_path, "cold-a", use_cache=False)
    assert any((own_cache / "trees").glob("*.json")) and any((own_cache / "trees/initramfs").glob("*.json"))

    monkeypatch.setattr(image.payload, "OVERLAY_DIR", changed_overlay)
    warm, warm_log = build(cfg_b, tmp_path, "warm-b", use_cache=True)
    assert "base tree from the cache" in warm_log and "initramfs from the cache" in warm_log, \
        "the overlay-only change did not reuse both caches"
    cold, cold_log = build(cfg_b, tmp_path, "cold-b", use_cache=False)
    assert "from the cache" not in cold_log, "--no-cache used a cache entry"
    same_day = datetime.datetime.now(datetime.UTC).date() == day

    warm_tree, cold_tree = tree_of(warm, tmp_path / "mnt-warm"), tree_of(cold, tmp_path / "mnt-cold")
    # the change is in both images (the comparison below is not of two unchanged trees)
    assert warm_tree[OVERLAY_CHANGE] == cold_tree[OVERLAY_CHANGE]
    assert warm_tree[OVERLAY_CHANGE][-1] == sha256_file(changed_overlay / OVERLAY_CHANGE)

    only_warm = sorted(set(warm_tree) - set(cold_tree))
    only_cold = sorted(set(cold_tree) - set(warm_tree))
    differ = sorted(p for p in set(warm_tree) & set(cold_tree)
                    if warm_tree[p] != cold_tree[p] and p not in LEGITIMATE_DIFFERENCES)
    if not same_day:   # the builds straddled midnight (UTC): shadow's last-change day may differ
        for rel in [p for p in differ if p in SHADOW_FILES]:
            if (warm_tree[rel][:-1] == cold_tree[rel][:-1]
                    and shadow_without_dates(warm, tmp_path / f"w-{rel}".replace("/", "_"), rel)
                    == shadow_without_dates(cold, tmp_path / f"c-{rel}".replace("/", "_"), rel)):
                differ.remove(rel)
    assert (only_warm, only_cold, differ) == ([], [], []), (
        f"warm and cold trees differ: only warm {only_warm[:20]}, only cold {only_cold[:20]}, "
        f"different {[(p, warm_tree[p], cold_tree[p]) for p in differ[:10]]}")
    assert len(warm_tree) > 10000   # a whole Debian tree was compared, not an empty mount
