"""--format vhdx (Hyper-V): the real qemu-img writes a dynamic VHDX that holds the raw disk's bytes."""
import json
import shutil
import subprocess

import pytest

from image.build import check_formats, write_format
from image.runner import Runner

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"), reason="qemu-img (qemu-utils) writes the VHDX")
MIB = 1 << 20


def test_vhdx_is_a_format_of_the_build():
    assert check_formats(["qcow2", "vhdx"]) == ["qcow2", "vhdx"]


def test_vhdx_is_dynamic_and_holds_the_raw_disk(tmp_path):
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as disk:
        disk.truncate(64 * MIB)
        for offset in (0, 5 * MIB + 17, 63 * MIB):   # data at the start, inside, and in the last MiB
            disk.seek(offset)
            disk.write(b"ca-appliance %d\n" % offset)
    out = tmp_path / "disk.vhdx"
    write_format("vhdx", None, raw, out, Runner(tmp_path / "build.log"), {})
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(out)], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["format"] == "vhdx" and info["virtual-size"] == 64 * MIB
    assert out.stat().st_size < 16 * MIB, "a fixed VHDX would be the whole 64 MiB: this one must be dynamic"
    subprocess.run(["qemu-img", "check", "-f", "vhdx", str(out)], check=True, capture_output=True)
    compared = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "vhdx", str(raw), str(out)],
                              capture_output=True, text=True)
    assert compared.returncode == 0, compared.stdout + compared.stderr
