"""The built Debian image's first sector: a protective MBR whose 0xEE entry is not marked bootable.

The UEFI specification wants the protective entry's boot indicator clear, and some UEFI firmware
(EDK2 before mid-2021, some vendors') refuses a GPT disk whose protective MBR says 0x80. The Fedora
base clears what blivet sets (the kickstart's post-pmbr %post, checked again by the builder on the
installed disk); this is the same check on the disk the Debian base assembles (sfdisk, grub-install).
"""
import subprocess

import pytest

from image.disk import MBR_ENTRIES_AT, PROTECTIVE_MBR_TYPE, protective_mbr_boot_flag

pytestmark = pytest.mark.slow


def test_the_protective_mbr_of_the_built_image_is_not_marked_bootable(debian_image, tmp_path):
    first = tmp_path / "first-sector.raw"
    # the first 512 bytes of the qcow2's disk, as the firmware reads them
    subprocess.run(["qemu-img", "dd", "-f", "qcow2", "-O", "raw", "bs=512", "count=1", f"if={debian_image}",
                    f"of={first}"], check=True, capture_output=True)
    sector = first.read_bytes()[:512]
    assert sector[510:512] == b"\x55\xaa"
    entries = [sector[MBR_ENTRIES_AT + 16 * i:MBR_ENTRIES_AT + 16 * (i + 1)] for i in range(4)]
    assert [e[4] for e in entries].count(PROTECTIVE_MBR_TYPE) == 1, [e.hex() for e in entries]
    assert protective_mbr_boot_flag(first) is False
    # and GRUB's boot code is there: BIOS boots from this sector, whatever the flag says
    assert b"GRUB" in sector
