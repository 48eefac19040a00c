"""Real seed volumes for the guest's unattended sources: ext4 and ISO 9660 images with given files,
attached as loop devices (the way a hypervisor's extra disk or CD-ROM appears), always detached."""
import contextlib
import subprocess
from pathlib import Path


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
