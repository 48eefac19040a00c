"""Proxmox VE and Hyper-V, booted for real: the Debian test image's FIRST boot, unattended, from a
cloud-init NoCloud seed (`cidata` ISO written by cloud-localds, as a Proxmox cloud-init drive or a
DVD in Hyper-V holds one), to PKI created and ACME ready with the seed's answers.

Rows (docs/importing.md says which recipe each one proves):
  proxmox-i440fx-bios  QEMU as `qm showcmd` shows a VM made by the Proxmox recipe: machine pc
                       (i440fx), SeaBIOS, --scsihw virtio-scsi-single (virtio-scsi-pci + scsi-hd),
                       --net0 virtio, the seed on ide2 (IDE CD), --serial0 socket --vga serial0;
                       network-config version 1 in the exact shape Proxmox writes for --ipconfig0
  proxmox-q35-ovmf     the same on machine q35 with --bios ovmf and an EFI vars disk (no keys
                       enrolled: Secure Boot off), network-config version 2
  hyperv-vhdx-ovmf     the VHDX the build writes (--format vhdx), booted AS a VHDX under OVMF like a
                       Generation 2 VM, the seed ISO in the DVD drive; QEMU has no Hyper-V storvsc or
                       netvsc, so disk and DVD hang on AHCI and the NIC is virtio (Hyper-V's own
                       drivers are checked in the initramfs by the image tier, not booted here)
Each row is one boot; one SSH login per row checks what the seed said (source, hostname, address).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from boot_helpers import (
    FIRST_BOOT_TIMEOUT,
    MEMORY_MB,
    acme_ready,
    boot_answers,
    record_boot,
    wait_until,
)

from image.build import write_format
from image.runner import Runner
from image.vm.qemu import OVMF_CODE, OVMF_VARS, free_port, machine_args, qemu_opt, resolve_accel
from tests.helpers.volumes import cloud_localds_image

pytestmark = pytest.mark.slow

MAC = "bc:24:11:5e:ed:01"      # Proxmox VE's own OUI (BC:24:11), as qm create assigns
GUEST = {"address": "10.0.2.15", "prefix": 24, "gateway": "10.0.2.2", "dns": "10.0.2.3"}   # QEMU user net
# What PVE::QemuServer::Cloudinit::nocloud_network writes for
# --ipconfig0 ip=10.0.2.15/24,gw=10.0.2.2 --nameserver 10.0.2.3 (no --searchdomain)
NETWORK_V1_PROXMOX = f"""version: 1
config:
    - type: physical
      name: eth0
      mac_address: '{MAC}'
      subnets:
      - type: static
        address: '{GUEST["address"]}'
        netmask: '255.255.255.0'
        gateway: '{GUEST["gateway"]}'
    - type: nameserver
      address:
      - '{GUEST["dns"]}'
"""
NETWORK_V2 = f"""version: 2
ethernets:
  eth0:
    match: {{macaddress: "{MAC}"}}
    addresses: [{GUEST["address"]}/{GUEST["prefix"]}]
    routes: [{{to: default, via: {GUEST["gateway"]}}}]
    nameservers: {{addresses: [{GUEST["dns"]}]}}
"""


@dataclass(frozen=True)
class Row:
    label: str
    machine: str            # pc (i440fx) | q35
    uefi: bool
    disk_kind: str          # virtio-scsi (Proxmox) | ahci (the Hyper-V row)
    cdrom_bus: str          # where the seed ISO hangs
    hostname: str
    hostname_in: str        # meta-data | user-data
    network_config: str | None


ROWS = {
    "proxmox-i440fx-bios": Row("Proxmox VE: i440fx, SeaBIOS, virtio-scsi-single, virtio-net, cidata on ide2",
                               "pc", False, "virtio-scsi", "ide.1", "pve-bios.boot.test", "meta-data",
                               NETWORK_V1_PROXMOX),
    "proxmox-q35-ovmf": Row("Proxmox VE: q35, OVMF + efidisk, virtio-scsi-single, virtio-net, cidata on ide2",
                            "q35", True, "virtio-scsi", "ide.2", "pve-ovmf.boot.test", "meta-data", NETWORK_V2),
    "hyperv-vhdx-ovmf": Row("Hyper-V Gen 2 shape: the VHDX under OVMF, cidata ISO in the DVD drive",
                            "q35", True, "ahci", "ide.1", "hyperv.boot.test", "user-data", None),
}


def seed_for(row_name: str, row: Row, work: Path) -> Path:
    """The cidata ISO: the test answers under ca_appliance: in a #cloud-config user-data, the hostname in
    meta-data (Proxmox's local-hostname) or in the answers, the network in network-config or DHCP."""
    answers, _ = boot_answers(work)
    answers["ca"]["dns_names"][0] = row.hostname
    del answers["network"]                         # from network-config, or the default (DHCP)
    if row.hostname_in == "meta-data":
        del answers["hostname"]
    else:
        answers["hostname"] = row.hostname
    user_data = "#cloud-config\n" + yaml.safe_dump({"ca_appliance": answers}, sort_keys=False)
    meta_data = f"instance-id: {row_name}\n"
    if row.hostname_in == "meta-data":
        meta_data += f"local-hostname: {row.hostname}\n"
    return cloud_localds_image(work / "seed.iso", user_data, meta_data, row.network_config)


def vhdx_of(image: Path, work: Path) -> Path:
    """The build's own --format vhdx writer, fed the test image's disk."""
    raw = work / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(raw)], check=True)
    out = work / "appliance.vhdx"
    write_format("vhdx", None, raw, out, Runner(work / "build.log"), {})
    raw.unlink()
    return out


def qemu_command(row: Row, disk: Path, disk_format: str, seed: Path, work: Path, ports: dict) -> list[str]:
    cmd = [*machine_args(f"ca-{row.machine}", row.machine, resolve_accel("tcg").accel, 2, MEMORY_MB),
           "-nodefaults", "-vga", "none", "-pidfile", str(work / "qemu.pid")]
    if row.uefi:   # qm set --bios ovmf --efidisk0 ...,efitype=4m,pre-enrolled-keys=0
        shutil.copyfile(OVMF_VARS, work / "efivars.fd")
        cmd += ["-drive", f"if=pflash,unit=0,format=raw,readonly=on,file={qemu_opt(OVMF_CODE)}",
                "-drive", f"if=pflash,unit=1,format=raw,id=drive-efidisk0,file={qemu_opt(work / 'efivars.fd')}"]
    drive = f"file={qemu_opt(disk)},if=none,format={disk_format},cache=writeback,discard=on"
    if row.disk_kind == "virtio-scsi":   # --scsihw virtio-scsi-single --scsi0 ...
        cmd += ["-device", "virtio-scsi-pci,id=virtioscsi0",
                "-drive", f"{drive},id=drive-scsi0",
                "-device", "scsi-hd,bus=virtioscsi0.0,channel=0,scsi-id=0,lun=0,drive=drive-scsi0,id=scsi0,"
                           "bootindex=100"]
    else:
        cmd += ["-drive", f"{drive},id=disk0", "-device", "ide-hd,bus=ide.0,drive=disk0,bootindex=100"]
    cmd += ["-drive", f"file={qemu_opt(seed)},if=none,id=drive-ide2,media=cdrom,readonly=on",
            "-device", f"ide-cd,bus={row.cdrom_bus},unit=0,drive=drive-ide2,id=ide2,bootindex=101"]
    forwards = ",".join(f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in ports.items())
    cmd += ["-netdev", f"user,id=net0,{forwards}", "-device", f"virtio-net-pci,mac={MAC},netdev=net0,id=net0",
            "-device", "virtio-rng-pci",   # --rng0 source=/dev/urandom: first boot generates keys
            "-chardev", f"socket,id=serial0,path={qemu_opt(work / 'serial.sock')},server=on,wait=off,"
                        f"logfile={qemu_opt(work / 'serial.log')}",
            "-device", "isa-serial,chardev=serial0"]   # --serial0 socket --vga serial0
    return cmd


def serial_notes(serial_log: Path) -> str:
    """What setup and sshd said on the console (for a failure message)."""
    lines = serial_log.read_text(errors="replace").replace("\r", "").splitlines()
    return "\n".join(line for line in lines if any(word in line for word in ("ca-appliance", "ssh", "note:")))[-3000:]


def ssh_facts(port: int, key: Path, timeout: float = 300, serial_log: Path | None = None) -> dict:
    """One login as the seed's admin: what setup recorded, the host name, the IPv4 address line."""
    import paramiko
    deadline = time.monotonic() + timeout
    while True:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect("127.0.0.1", port=port, username="admin", key_filename=str(key), timeout=10,
                           banner_timeout=30, auth_timeout=30, allow_agent=False, look_for_keys=False)
            break
        except (OSError, paramiko.SSHException, EOFError):
            client.close()
            if time.monotonic() > deadline:
                notes = serial_notes(serial_log) if serial_log else ""
                pytest.fail(f"no SSH login as admin on 127.0.0.1:{port} within {timeout:.0f} s; console:\n{notes}")
            time.sleep(3)
    try:
        def run(command):
            _, stdout, _ = client.exec_command(command, timeout=120)
            return stdout.read().decode(errors="replace").strip()
        status = json.loads(run("sudo ca-appliance status --json") or "{}")
        return {"status": status, "hostname": run("hostname"),
                "ipv4": run("ip -4 -o addr show scope global")}
    finally:
        client.close()


@pytest.fixture(scope="module")
def tcg_ready():
    if not shutil.which("cloud-localds"):
        pytest.skip("cloud-localds (cloud-image-utils) writes the seed ISO")
    if not (OVMF_CODE.exists() and OVMF_VARS.exists()):
        pytest.skip(f"no OVMF firmware at {OVMF_CODE} (apt-get install ovmf)")


@pytest.mark.parametrize("row_name", list(ROWS))
def test_first_boot_from_a_cidata_seed_reaches_acme(debian_image, tcg_ready, row_name, tmp_path):
    row = ROWS[row_name]
    work = tmp_path   # private: other test sessions clean build/ and replace the test image under it
    seed = seed_for(row_name, row, work)
    if row_name.startswith("hyperv"):
        disk, disk_format = vhdx_of(debian_image, work), "vhdx"      # the VHDX itself, read and written
    else:
        disk, disk_format = work / "scsi0.qcow2", "qcow2"   # qm disk import copies the disk, so does this
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", str(debian_image), str(disk)],
                       check=True)
    ports = {443: free_port()}
    ports[22] = free_port(taken=ports.values())
    cmd = qemu_command(row, disk, disk_format, seed, work, ports)
    (work / "qemu.cmd").write_text(" ".join(cmd) + "\n")
    serial_log = work / "serial.log"
    with open(work / "qemu.log", "w") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    try:
        def alive():
            if proc.poll() is not None:
                pytest.fail(f"{row.label}: QEMU exited {proc.returncode}: "
                            f"{(work / 'qemu.log').read_text()[-2000:]}")

        start = time.monotonic()
        fingerprint = wait_until(f"{row.label}: first boot from the cidata seed, the ACME directory",
                                 lambda: acme_ready(ports[443]), FIRST_BOOT_TIMEOUT, alive, serial_log)
        seconds = time.monotonic() - start
        facts = ssh_facts(ports[22], work / "keys" / "admin_ed25519", serial_log=serial_log)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    record_boot(row.label, "first boot from cidata, PKI created, ACME ready", seconds)
    serial = serial_log.read_text(errors="replace")
    assert len(fingerprint) == 64
    assert facts["status"].get("configured_by") == "cidata", facts["status"]
    assert facts["hostname"] in (row.hostname, row.hostname.split(".")[0]), facts["hostname"]
    assert f"{GUEST['address']}/{GUEST['prefix']}" in facts["ipv4"]
    if row.network_config is not None:   # the static address network-config gave, not a DHCP lease
        assert "dynamic" not in facts["ipv4"], facts["ipv4"]
    else:
        assert "dynamic" in facts["ipv4"], facts["ipv4"]
    if row.uefi:
        assert "BdsDxe" in serial, "no OVMF boot manager output on the console: this was not a UEFI boot"
