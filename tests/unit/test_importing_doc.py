"""docs/importing.md's seed-ISO recipe, run as written: the ISO it makes is read back by the
appliance's own reader, and libvirt (its test driver) takes the virt-install line with no answers in
the domain XML."""
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from ca_appliance.sources import SEED_FILE_NAME, _read_iso9660_file

DOC = Path(__file__).resolve().parents[2] / "docs/importing.md"
ANSWERS = "hostname: ca.lab.example\nca: {name: Lab CA, password: 'Sekr3t-Sekr3t-Sekr3t-31-chars!'}\n"


def recipe() -> list[str]:
    """The shell lines of the page's seed-ISO section, in order."""
    text = DOC.read_text()
    section = text[text.index("## libvirt, unattended: a `CASEED` seed ISO"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


@pytest.mark.skipif(not shutil.which("genisoimage"), reason="genisoimage (host-packages.txt) makes the ISO")
def test_the_seed_iso_recipe_makes_a_private_iso_the_appliance_reads(tmp_path):
    (tmp_path / "answers.yaml").write_text(ANSWERS)
    script = "\n".join(line for line in recipe() if not line.startswith("virt-install"))
    subprocess.run(["sh", "-ec", script], cwd=tmp_path, check=True)
    iso = tmp_path / "ca-seed.iso"
    assert stat.S_IMODE(os.stat(iso).st_mode) == 0o600
    assert not (tmp_path / "ca-appliance.yaml").exists()
    assert _read_iso9660_file(str(iso), SEED_FILE_NAME, "caseed") == ANSWERS.encode()
    with open(iso, "rb") as f:
        f.seek(16 * 2048)
        assert f.read(2048)[40:72].decode().strip() == "CASEED"


@pytest.mark.skipif(not shutil.which("virt-install"), reason="virt-install (virtinst) checks the line")
def test_libvirt_takes_the_virt_install_line_and_its_xml_holds_no_answers(tmp_path):
    (line,) = [line for line in recipe() if line.startswith("virt-install")]
    (tmp_path / "ca-seed.iso").write_bytes(b"\0" * 2048)
    disk = tmp_path / "dist/ca-appliance-1.1.0-debian.qcow2"
    disk.parent.mkdir()
    disk.write_bytes(b"")
    result = subprocess.run(f"{line} --connect test:///default --print-xml", shell=True, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    xml = result.stdout
    assert re.search(r'<disk type="file" device="cdrom">\s*<source file="[^"]*ca-seed.iso"/>', xml)
    assert "<readonly/>" in xml
    assert "sysinfo" not in xml and "io.systemd.credential" not in xml and "Sekr3t" not in xml


def test_the_page_names_what_the_smbios_route_exposes():
    text = DOC.read_text()
    for exposure in ("/proc/PID/cmdline", "virsh dumpxml", "/var/log/libvirt/qemu/NAME.log"):
        assert exposure in text
