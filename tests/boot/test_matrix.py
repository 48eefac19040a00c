"""Each import target's virtual hardware boots the first-booted appliance and serves its CA.

Rows (image.vm.qemu.HARDWARE): VirtualBox's defaults (AHCI SATA, e1000), vSphere's paravirtual
devices (PVSCSI, VMXNET3), the parallel-SCSI LSI 53C895A (sym53c8xx), and UEFI under OVMF on
libvirt's q35/virtio. The libvirt row itself is the shared first boot (conftest.first_boot).
Each boots a copy-on-write overlay of the first-booted disk and must answer ACME on the
forwarded port with the same root the first boot created: the disk driver found the root, the
NIC driver got a lease, and the CA survived a change of hardware.
"""
import shutil
import time

import pytest
from boot_helpers import LATER_BOOT_TIMEOUT, MEMORY_MB, WORK, acme_ready, record_boot, wait_until

from image.vm.qemu import HARDWARE, OVMF_CODE, OVMF_VARS, VM, resolve_accel

pytestmark = pytest.mark.slow

ROWS = {
    "virtualbox": ("VirtualBox: pc, AHCI SATA, e1000", HARDWARE["virtualbox"], False),
    "vsphere": ("vSphere: pc, PVSCSI, VMXNET3", HARDWARE["vsphere"], False),
    "lsi-scsi": ("parallel SCSI: LSI 53C895A, e1000", HARDWARE["lsi-scsi"], False),
    "uefi": ("UEFI (OVMF): q35, virtio-blk, virtio-net", HARDWARE["libvirt"], True),
}


def test_first_boot_creates_the_ca_on_libvirts_q35_virtio(first_boot):
    assert first_boot.disk.is_file() and len(first_boot.fingerprint) == 64


@pytest.mark.parametrize("row", list(ROWS))
def test_row_boots_and_serves_the_same_ca(first_boot, row):
    label, hardware, uefi = ROWS[row]
    if uefi and not (OVMF_CODE.exists() and OVMF_VARS.exists()):
        pytest.skip(f"no OVMF firmware at {OVMF_CODE} (apt-get install ovmf)")
    work = WORK / f"row-{row}"
    shutil.rmtree(work, ignore_errors=True)
    with VM(first_boot.disk, work, cpus=2, memory_mb=MEMORY_MB, accel=resolve_accel("tcg").accel,
            ports={"ca": 443}, hardware=hardware, uefi=uefi) as vm:
        start = time.monotonic()
        vm.start()
        fingerprint = wait_until(f"{label}: the ACME directory on the forwarded port",
                                 lambda: acme_ready(vm.ports["ca"]), LATER_BOOT_TIMEOUT,
                                 lambda: vm.check_alive(label), vm.serial_log)
        seconds = time.monotonic() - start
        serial = vm.serial_log.read_text(errors="replace")
    record_boot(label, "later boot to ACME ready", seconds)
    assert fingerprint == first_boot.fingerprint, "a different CA answered: the first boot's state was lost"
    if uefi:
        assert "BdsDxe" in serial, "no OVMF boot manager output on the console: this was not a UEFI boot"
