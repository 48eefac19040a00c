"""What `invoke build` and `invoke clean` do before and around the long work: refuse early and clearly,
keep SHA256SUMS whole, and clean without leaving (or following) mounts."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from image import build as build_mod
from image.bases import BaseResult, debian, get_base
from image.config import load_config
from image.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def debian_cfg():
    return load_config(overrides={"image": {"base": "debian"}})


def path_without(tmp_path, missing: set[str]) -> str:
    """A PATH holding every tool the Debian build needs except `missing`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in {**debian.REQUIRED_TOOLS, **build_mod.CONVERSION_TOOLS}:
        found = shutil.which(tool)
        if found and tool not in missing:
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def test_a_missing_host_tool_is_reported_before_any_work_with_both_package_names(tmp_path, monkeypatch,
                                                                                 debian_cfg):
    monkeypatch.setenv("PATH", path_without(tmp_path, {"mmdebstrap", "qemu-img"}))
    with pytest.raises(UserError) as e:
        build_mod.build_appliance(debian_cfg, build_dir=tmp_path / "build", dist_dir=tmp_path / "dist")
    message = str(e.value)
    assert "mmdebstrap" in message and "qemu-img" in message
    assert "apt-get install mmdebstrap qemu-utils" in message and "dnf install mmdebstrap qemu-img" in message
    assert not (tmp_path / "build").exists() and not (tmp_path / "dist").exists()


def test_running_without_root_is_refused_before_any_work(tmp_path, monkeypatch, debian_cfg):
    # the build as an unprivileged user would see it (the venv's interpreter is not theirs to run here)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(UserError, match=r"invoke build \(base debian\): needs root"):
        build_mod.build_appliance(debian_cfg, build_dir=tmp_path / "build", dist_dir=tmp_path / "dist")
    assert not (tmp_path / "build").exists() and not (tmp_path / "dist").exists()


def test_an_unknown_format_or_base_is_a_user_error(debian_cfg):
    with pytest.raises(UserError, match=r"--format: 'iso' is not one of: qcow2, raw, vmdk, vhdx, ova"):
        build_mod.build_appliance(debian_cfg, formats=["qcow2", "iso"])
    with pytest.raises(UserError, match=r"base: 'arch' is not one of"):
        get_base("arch")


def test_ova_signing_options_are_checked_before_the_build(tmp_path, debian_cfg):
    key = tmp_path / "key.pem"
    key.write_text("k")
    with pytest.raises(UserError, match=r"--sign: only an OVA is signed.*add --format ova"):
        build_mod.build_appliance(debian_cfg, formats=["qcow2"], sign_key=key, sign_cert=key)
    with pytest.raises(UserError, match=r"give both"):
        build_mod.build_appliance(debian_cfg, formats=["ova"], sign_key=key)
    with pytest.raises(UserError, match=r"--cert: '.*nope.pem' does not exist"):
        build_mod.build_appliance(debian_cfg, formats=["ova"], sign_key=key, sign_cert=tmp_path / "nope.pem",
                                  build_dir=tmp_path / "build", dist_dir=tmp_path / "dist")
    assert not (tmp_path / "build").exists()


def test_every_base_exposes_the_build_interface():
    base = get_base("debian")
    assert base.NEEDS_ROOT is True and callable(base.build_raw)
    assert all(len(pkgs) == 2 for pkgs in base.REQUIRED_TOOLS.values())
    assert BaseResult(raw=Path("x"), release="r").packages == []


def test_output_names_follow_name_version_base(debian_cfg):
    assert build_mod.output_stem(debian_cfg) == "ca-appliance-1.1.0-debian"


def test_sha256sums_keeps_other_builds_lines_replaces_this_builds_and_drops_removed_files(tmp_path):
    for name in ("other-fedora.qcow2", "mine.qcow2", "mine.manifest.json"):
        (tmp_path / name).write_text(name)
    (tmp_path / "SHA256SUMS").write_text("aa  other-fedora.qcow2\nbb  mine.qcow2\nee  deleted-since.raw\n")
    build_mod.update_sums(tmp_path, {"mine.qcow2": "cc", "mine.manifest.json": "dd"})
    assert (tmp_path / "SHA256SUMS").read_text() == "dd  mine.manifest.json\ncc  mine.qcow2\naa  other-fedora.qcow2\n"
    assert not list(tmp_path.glob("*.partial"))


def test_clean_removes_build_and_dist_but_not_the_cache_and_never_descends_into_a_mount(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("mounting a file system needs root")
    cache = tmp_path / "cache"
    monkeypatch.setenv("CA_APPLIANCE_CACHE", str(cache))
    (cache / "releases").mkdir(parents=True)
    (cache / "releases" / "kept").write_text("download")
    build, dist = tmp_path / "build", tmp_path / "dist"
    (build / "work" / "rootfs" / "proc").mkdir(parents=True)
    (dist).mkdir()
    (dist / "x.qcow2").write_text("x")
    # a bind mount of a directory outside: deleting through it would delete the outside files
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    subprocess.run(["mount", "--bind", outside, build / "work" / "rootfs" / "proc"], check=True)
    try:
        build_mod.clean_outputs(build_dir=build, dist_dir=dist)
    finally:
        subprocess.run(["umount", build / "work" / "rootfs" / "proc"], capture_output=True)
    assert not build.exists() and not dist.exists()
    assert (outside / "precious").read_text() == "keep me"
    assert (cache / "releases" / "kept").exists()
