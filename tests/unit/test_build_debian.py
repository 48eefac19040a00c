"""The Debian base's decisions that need no bootstrap: sources, the mmdebstrap call, artifact kinds,
the files it lays in. (The image itself is checked in tests/image/.)"""
import os
import shlex
import stat
from pathlib import Path

import pytest

from image.artifacts import Artifact
from image.bases import debian
from image.config import load_config
from image.errors import UserError


def cfg_with(**debian_section):
    return load_config(overrides={"image": {"base": "debian"}, "debian": debian_section})


def test_security_updates_come_from_the_official_mirror_and_a_private_mirror_is_used_alone():
    assert debian.sources(cfg_with(suite="bookworm")) == [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    ]
    private = debian.sources(cfg_with(mirror="http://mirror.lab.example/debian", suite="trixie"))
    assert private == ["deb http://mirror.lab.example/debian trixie main",
                       "deb http://mirror.lab.example/debian trixie-updates main"]


def test_a_file_mirror_is_made_visible_inside_the_chroot():
    cmd = debian.mmdebstrap_command(cfg_with(mirror="file:///srv/mirror/debian", suite="bookworm"), Path("/r"), [],
                                    Path("/u"))
    assert "--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount" in cmd
    assert cmd[-2:] == ["deb file:///srv/mirror/debian bookworm main",
                        "deb file:///srv/mirror/debian bookworm-updates main"]


def test_mmdebstrap_installs_the_package_set_lean_and_a_local_deb_with_quoted_paths():
    deb = Path("/tmp/my debs/step-ca_0.30.2-1_amd64.deb")
    cmd = debian.mmdebstrap_command(cfg_with(suite="trixie"), Path("/w/rootfs"), [deb], Path("/w/used.txt"))
    (include,) = [c for c in cmd if c.startswith("--include=")]
    assert include.removeprefix("--include=").split(",") == list(debian.PACKAGES + debian.UPDATE_PACKAGES)
    assert "--variant=minbase" in cmd and "--dpkgopt=path-exclude=/usr/share/man/*" in cmd
    hooks = [c.split("=", 1)[1] for c in cmd if c.startswith("--customize-hook=")]
    copy_in = next(h for h in hooks if h.startswith("copy-in"))
    assert shlex.split(copy_in) == ["copy-in", str(deb), "/tmp/"]
    install = next(h for h in hooks if "apt-get install" in h)
    assert shlex.split(install)[-1] == f"/tmp/{deb.name}"
    assert cmd[-5:-3] == ["trixie", "/w/rootfs"]   # suite and target, then the three sources


def test_an_rpm_cannot_go_into_a_debian_image():
    rpm = Artifact("step-ca", "0.30.2", "rpm", Path("/c/step-ca-0.30.2-1.x86_64.rpm"), "0" * 64)
    with pytest.raises(UserError, match=r"step-ca is a 'rpm' package .*the debian base takes a \.deb or a binary"):
        debian.check_artifact_kinds([rpm])
    deb = Artifact("step-ca", "0.30.2", "deb", Path("/c/step-ca_0.30.2-1_amd64.deb"), "0" * 64)
    binary = Artifact("step-ca", "local", "binary", Path("/c/step-ca"), "0" * 64)
    assert debian.check_artifact_kinds([deb]) == [deb.path]
    assert debian.check_artifact_kinds([binary]) == []


def test_base_files_are_laid_root_owned_with_only_the_executable_bit_from_the_checkout(tmp_path):
    debian.lay_base_files(tmp_path)
    fstype = tmp_path / "etc/initramfs-tools/conf.d/ca-appliance-fstype"
    assert stat.S_IMODE(os.stat(fstype).st_mode) == 0o644 and "FSTYPE=ext4" in fstype.read_text()
    assert (tmp_path / "etc/default/grub.d/ca-appliance.cfg").is_file()
    # the resume hook would otherwise bake the build host's swap device into the image's initramfs
    resume = (tmp_path / "etc/initramfs-tools/conf.d/ca-appliance-resume").read_text()
    assert "RESUME=none" in resume.splitlines()
    # users, units, drivers and growroot are the guest's provision's now, not the host's
    assert not (tmp_path / "etc/systemd").exists() and not (tmp_path / "etc/initramfs-tools/hooks").exists()


def test_the_build_provisions_the_rootfs_with_the_guest_program_in_a_private_mount_namespace():
    cmd = debian.provision_command(Path("/w/root fs"))
    assert cmd[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    script = cmd[cmd.index("-c") + 1]
    assert cmd[-1] == "/w/root fs"   # "$1": no quoting trouble
    assert 'exec chroot "$root"' in script and "/usr/bin/ca-appliance provision --base debian" in script
    assert 'mount -t proc proc "$root/proc"' in script
