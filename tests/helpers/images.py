"""An image's root file system mounted read-only for inspection: one place for the loop device, the
mount without journal replay, and their cleanup (also on failure)."""
import contextlib
import subprocess
from pathlib import Path


def _run(*cmd) -> str:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=True).stdout


@contextlib.contextmanager
def mounted_root(raw: Path, offset: int, size: int, mnt: Path):
    """The file system at byte `offset` (`size` bytes) of the raw disk `raw`, mounted read-only at
    mnt; unmounted and its loop device detached when the block ends."""
    dev = _run("losetup", "--find", "--show", "--read-only", "--offset", offset, "--sizelimit", size, raw).strip()
    try:
        _run("mount", "-o", "ro,noload", dev, mnt)
        try:
            yield mnt
        finally:
            _run("umount", mnt)
    finally:
        _run("losetup", "--detach", dev)
