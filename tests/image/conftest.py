"""The built Debian appliance image, attached read-only for inspection (and always detached again).

The image is built once per test session by tests/image_fixture.py (minutes; reused while the config,
payload and build code are unchanged). `image_root` is its root file system mounted read-only: the
qcow2 converted to a sparse raw file in a temp dir, a read-only loop device over the partition,
`mount -o ro,noload` (noload: not even the journal is replayed).
"""
import json
import subprocess
from pathlib import Path

import pytest
from helpers.images import mounted_root


@pytest.fixture(scope="session")
def debian_dist(debian_image) -> Path:
    """The directory the build wrote: the qcow2, SHA256SUMS and the manifest."""
    return debian_image.parent


@pytest.fixture(scope="session")
def manifest(debian_dist) -> dict:
    (path,) = debian_dist.glob("*.manifest.json")
    return json.loads(path.read_text())


def run(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=True, **kw)


@pytest.fixture(scope="session")
def raw_image(debian_image, tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("raw") / "disk.raw"
    run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", debian_image, raw)
    return raw


@pytest.fixture(scope="session")
def root_partition(raw_image) -> dict:
    """The root file system's partition (the GPT also holds a BIOS boot partition and the ESP)."""
    parts = json.loads(run("sfdisk", "--json", raw_image).stdout)["partitiontable"]["partitions"]
    (part,) = [p for p in parts if p["type"].upper() == "0FC63DAF-8483-4772-8E79-3D69D8477DE4"]
    return part


@pytest.fixture(scope="session")
def image_root(raw_image, root_partition, tmp_path_factory) -> Path:
    mnt = tmp_path_factory.mktemp("root")
    with mounted_root(raw_image, root_partition["start"] * 512, root_partition["size"] * 512, mnt):
        yield mnt


@pytest.fixture(scope="session")
def root_blkid(image_root, raw_image) -> dict:
    """blkid of the mounted root file system (UUID, LABEL, TYPE)."""
    source = run("findmnt", "--noheadings", "--output", "SOURCE", "--mountpoint", image_root).stdout.strip()
    out = run("blkid", "-o", "export", source).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
