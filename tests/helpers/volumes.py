"""Real seed volumes for the guest's unattended sources: ext4, vfat and ISO 9660 images with given files
(names may hold folders: openstack/latest/user_data), and cloud-init NoCloud seeds made by
cloud-localds as Proxmox VE users make them, attached as loop devices (the way a hypervisor's extra
disk or CD-ROM appears), always detached."""
import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

# the hostile-seed tests run the real guest CLI under Debian's python3 and read a marked secret
SECRET = "Hunter2-never-shown-anywhere"
needs_loop_devices = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("losetup"),
    reason="seed volumes are attached as loop devices, which needs root and losetup")


def run(*command):
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def loop_device(image, read_only=False):
    device = run("losetup", "-f", "--show", *(["-r"] if read_only else []), str(image))
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


def content_dir(tmp_path: Path, name: str, files: dict) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    for file_name, text in files.items():
        (directory / file_name).parent.mkdir(parents=True, exist_ok=True)
        (directory / file_name).write_text(text)
    return directory


@contextlib.contextmanager
def ext4_volume(tmp_path, label, files):
    """A real ext4 file system labelled `label` with the given files, on a loop device."""
    image = tmp_path / f"{label}.img"
    with open(image, "wb") as handle:
        handle.truncate(8 * 1024 * 1024)
    run("mkfs.ext4", "-q", "-L", label, "-d", str(content_dir(tmp_path, f"{label}-ext4", files)), str(image))
    with loop_device(image) as device:
        yield device


@contextlib.contextmanager
def iso_volume(tmp_path, label, files, options=("-J", "-r")):
    """A real ISO 9660 image labelled `label` with the given files, attached read-only like a CD-ROM."""
    image = tmp_path / f"{label}.iso"
    run("xorriso", "-as", "mkisofs", "-quiet", "-V", label, *options, "-o", str(image),
        str(content_dir(tmp_path, f"{label}-iso", files)))
    with loop_device(image, read_only=True) as device:
        yield device


def cloud_localds_image(out: Path, user_data: str, meta_data: str | None = None,
                        network_config: str | None = None, filesystem: str = "iso9660") -> Path:
    """A NoCloud seed image (label cidata) written by cloud-localds from cloud-image-utils."""
    work = out.parent / f"{out.name}-files"
    work.mkdir(parents=True, exist_ok=True)
    (work / "user-data").write_text(user_data)
    command = ["cloud-localds", "--filesystem", filesystem]
    if network_config is not None:
        (work / "network-config").write_text(network_config)
        command += ["--network-config", str(work / "network-config")]
    command += [str(out), str(work / "user-data")]
    if meta_data is not None:
        (work / "meta-data").write_text(meta_data)
        command.append(str(work / "meta-data"))
    run(*command)
    return out


@contextlib.contextmanager
def cloud_localds_volume(tmp_path, user_data, meta_data=None, network_config=None, filesystem="iso9660"):
    """A cloud-localds NoCloud seed attached read-only like the CD-ROM Proxmox or Hyper-V shows."""
    image = cloud_localds_image(tmp_path / f"seed-{filesystem}.img", user_data, meta_data, network_config,
                                filesystem)
    with loop_device(image, read_only=True) as device:
        yield device
