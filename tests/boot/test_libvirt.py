"""libvirt for real: the documented `virt-install --import` line, with its CASEED seed ISO for the answers,
run against a libvirtd these tests start themselves (conftest: `libvirt`), under TCG.

The unattended import is the matrix's shared first boot (boot_helpers.first_boot_with_libvirt);
here it is judged. A second, short boot of the same line without answers shows the wizard's
offer on the serial console (what `virsh console` shows), and is then switched off.
"""
import os
import shlex
import time

import pytest
from boot_helpers import (
    FIRST_BOOT_TIMEOUT,
    WIZARD_OFFER,
    WORK,
    Libvirt,
    overlay,
    readme_import_line,
    readme_seed_lines,
    record_boot,
    virsh,
    wait_until,
)


def test_the_readme_lines_parse_and_ci_changes_only_what_ci_lacks(tmp_path):
    line = readme_import_line()
    args = shlex.split(line)
    assert args[:2] == ["virt-install", "--import"] and "--graphics" in args
    make_iso, attach = readme_seed_lines()
    assert make_iso == "genisoimage -quiet -volid CASEED -joliet -rock -output ca-seed.iso ca-appliance.yaml"
    assert attach == "--disk ca-seed.iso,device=cdrom,readonly=on"
    answers = tmp_path / "a.yaml"
    answers.write_text("hostname: t.example\n")
    ci = Libvirt(tmp_path).readme_command(name="t", disk=tmp_path / "d.qcow2", serial_log=tmp_path / "s.log",
                                          answers=answers)
    ci_args = shlex.split(ci)
    assert f"--disk {tmp_path / 'd.qcow2'}" in ci and "--network user" in ci
    assert f"--console pty,target_type=serial,log.file={tmp_path / 's.log'}" in ci
    seed = tmp_path / "seed-t/ca-seed.iso"
    assert f"--disk {seed},device=cdrom,readonly=on" in ci and ci.endswith("--virt-type qemu --noautoconsole")
    # the seed the documented line made is what the appliance's own reader finds: a CASEED volume
    assert seed.read_bytes()[0x8000 + 40:0x8000 + 46] == b"CASEED"
    assert "sysinfo" not in ci and "base64" not in ci   # nothing of the answers on the command line
    # everything else is the README's, word for word
    kept = [a for a in args if not a.startswith(("dist/", "pty,")) and a not in ("default", "ca")]
    assert all(a in ci_args for a in kept), set(kept) - set(ci_args)


@pytest.mark.slow
def test_documented_import_with_a_seed_iso_comes_up_unattended(first_boot):
    if first_boot.how != "libvirt":
        pytest.skip("libvirt cannot run here (libvirtd/virt-install missing): the first boot ran under plain QEMU")
    serial = first_boot.serial_log.read_text(errors="replace")
    assert WIZARD_OFFER not in serial, "the wizard was offered although the answers were passed"
    # the answers passed through --sysinfo configured it: their first DNS name is in the ACME URL
    assert first_boot.acme_url == "https://ca.boot.test/acme/acme/directory"


@pytest.mark.slow
def test_readme_import_without_answers_shows_the_wizard_on_the_serial_console(libvirt, debian_image):
    name = f"ca-boot-wizard-{os.getpid()}"
    disk = overlay(debian_image, WORK / "wizard.qcow2")
    log = WORK / "wizard-serial.log"
    log.unlink(missing_ok=True)
    start = time.monotonic()
    try:
        libvirt.install(libvirt.readme_command(name=name, disk=disk, serial_log=log, answers=None))
        wait_until("libvirt import without answers: the wizard's offer on the serial console",
                   lambda: log.exists() and WIZARD_OFFER in log.read_text(errors="replace"),
                   FIRST_BOOT_TIMEOUT, log=log)
        record_boot("libvirt, no answers", "boot to the wizard's offer on ttyS0", time.monotonic() - start)
        assert virsh("domstate", name).stdout.strip() == "running"
    finally:
        libvirt.remove(name)   # nothing to keep: the wizard waits for a person
        disk.unlink(missing_ok=True)
