"""`invoke bench`'s baseline disk: the built appliance image with only the appliance's own units
taken out, on the same GPT layout (BIOS boot, ESP, root) as the appliance boots from."""
import os
import subprocess
from pathlib import Path

from image.bench.bench import APPLIANCE_UNITS, plain_image
from image.disk import loops_backed_by, mounts_under


def enabled_units(raw: Path, part_offset: int, part_size: int, mnt: Path) -> set[str]:
    dev = subprocess.run(["losetup", "--find", "--show", "--read-only", "--offset", str(part_offset),
                          "--sizelimit", str(part_size), str(raw)], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        subprocess.run(["mount", "-o", "ro,noload", dev, str(mnt)], check=True)
        try:
            return {name for _, _, names in os.walk(mnt / "etc/systemd/system") for name in names}
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "--detach", dev], check=True)


def test_the_plain_image_lacks_only_the_appliances_units(debian_image, root_partition, tmp_path):
    raw = plain_image(debian_image, tmp_path / "plain", say=lambda *_: None)
    assert not loops_backed_by(tmp_path) and not mounts_under(tmp_path)   # nothing left attached
    (tmp_path / "mnt").mkdir()
    units = enabled_units(raw, root_partition["start"] * 512, root_partition["size"] * 512, tmp_path / "mnt")
    assert not units & set(APPLIANCE_UNITS)
    # the rest of the boot is the appliance's: sshd (what the baseline waits for) and its host keys
    assert {"ssh.service", "ca-appliance-ssh-hostkeys.service", "ca-appliance-growroot.service"} <= units
