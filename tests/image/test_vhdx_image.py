"""The Hyper-V disk (--format vhdx) of the built Debian appliance: the build's own write_format writes
it from the image's raw disk, and qemu-img finds it sound and byte-for-byte the qcow2's disk."""
import json
import subprocess

import pytest

from image.build import write_format
from image.runner import Runner

pytestmark = pytest.mark.slow
MIB = 1 << 20


def qemu_img(*args):
    return subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def vhdx(raw_image, tmp_path_factory):
    out = tmp_path_factory.mktemp("vhdx") / "appliance.vhdx"
    write_format("vhdx", None, raw_image, out, Runner(out.parent / "build.log"), {})
    return out


def test_vhdx_is_a_dynamic_vhdx_hyper_v_accepts(vhdx, debian_image):
    info = json.loads(qemu_img("info", "--output=json", vhdx).stdout)
    qcow2 = json.loads(qemu_img("info", "--output=json", debian_image).stdout)
    assert info["format"] == "vhdx"
    assert info["virtual-size"] == qcow2["virtual-size"]
    assert info["virtual-size"] % MIB == 0, "Hyper-V takes only VHDX sizes in whole MiB"
    # dynamic: the file holds the used blocks, not the whole virtual disk
    assert info["actual-size"] < info["virtual-size"] // 2
    check = qemu_img("check", "-f", "vhdx", vhdx)
    assert check.returncode == 0, check.stdout + check.stderr


def test_vhdx_holds_the_same_disk_as_the_qcow2(vhdx, debian_image):
    compared = qemu_img("compare", "-f", "qcow2", "-F", "vhdx", debian_image, vhdx)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert "Images are identical" in compared.stdout
