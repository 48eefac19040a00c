"""A first boot whose hypervisor clock is years off (issue 25): no PKI, one line on the console.

QEMU's `-rtc base=2015-01-01` starts the guest's clock years before the image was built (systemd
may move it forward to its own build date at boot: still before built_at). The unattended answers
name one NTP server that never answers (127.0.0.1: the guest's own loopback, where nothing serves
NTP, so no packet leaves the VM), so chrony cannot set the clock right: setup waits its bounded
time for synchronisation, then stops with exit 2 and the one line, before any key is made.
One boot under TCG, a few minutes.
"""
from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import yaml
from boot_helpers import FIRST_BOOT_TIMEOUT, MEMORY_MB, acme_ready, boot_answers, overlay, record_boot, wait_until
from image_fixture import PROJECT_ROOT

from image.vm.qemu import free_port, machine_args, qemu_opt, resolve_accel, write_credential_files
from image.vm.verify import CREDENTIAL_NAME

pytestmark = pytest.mark.slow

CLOCK_LINE = "set network.ntp or fix the hypervisor's clock"
# Not under boot_helpers.WORK: another boot session's clean-up removes that whole directory.
CLOCK_WORK = PROJECT_ROOT / "build" / "boot-clock-test"
REFUSED = "ca-appliance: setup: the clock says "


def test_first_boot_with_a_2015_clock_and_unreachable_ntp_creates_no_pki(debian_image):
    work = CLOCK_WORK
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    answers, _ = boot_answers(work)
    answers["network"] = {"mode": "dhcp", "ntp": ["127.0.0.1"]}
    write_credential_files(work / "credentials", {CREDENTIAL_NAME: yaml.safe_dump(answers).encode()})
    disk = overlay(debian_image, work / "disk.qcow2")
    port = free_port()
    serial_log = work / "serial.log"
    cmd = [*machine_args("ca-clock-2015", "q35", resolve_accel("tcg").accel, 2, MEMORY_MB),
           "-rtc", "base=2015-01-01T00:00:00",
           "-pidfile", str(work / "qemu.pid"),
           "-drive", f"file={qemu_opt(disk)},format=qcow2,if=virtio,cache=writeback",
           # restrict=on: the guest reaches nothing beyond QEMU's forwards (no NTP, DNS or other traffic out)
           "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:443",
           "-device", "virtio-net-pci,netdev=net0",
           "-device", "virtio-rng-pci",
           "-fw_cfg", f"name=opt/io.systemd.credentials/{CREDENTIAL_NAME},"
                      f"file={qemu_opt(work / 'credentials' / CREDENTIAL_NAME)}",
           "-chardev", f"socket,id=serial0,path={qemu_opt(work / 'serial.sock')},server=on,wait=off,"
                       f"logfile={qemu_opt(serial_log)}",
           "-serial", "chardev:serial0"]
    (work / "qemu.cmd").write_text(" ".join(cmd) + "\n")
    with open(work / "qemu.log", "w") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    try:
        def alive():
            if proc.poll() is not None:
                pytest.fail(f"QEMU exited {proc.returncode}: {(work / 'qemu.log').read_text()[-2000:]}")

        def console():
            return serial_log.read_text(errors="replace").replace("\r", "") if serial_log.exists() else ""

        start = time.monotonic()
        wait_until("first boot with a 2015 clock: setup's refusal on the console",
                   lambda: CLOCK_LINE in console() or "Your CA is ready" in console(),
                   FIRST_BOOT_TIMEOUT, alive, serial_log)
        seconds = time.monotonic() - start
        text = console()
        assert "Your CA is ready" not in text, "setup created a PKI with a clock years off"
        [line] = [line for line in text.splitlines() if REFUSED in line]
        assert line[line.index(REFUSED):].startswith(REFUSED) and CLOCK_LINE in line
        assert "earlier than this image's build" in line, line
        print(f"\nthe console said: {line[line.index(REFUSED):]}")   # shown with -s: what the docs quote
        # the bounded wait happened: chronyd answered, with the answers' server, and never synchronised
        assert "waiting up to 60 s for chrony to synchronise it" in text
        assert acme_ready(port) is None, "step-ca answers ACME although setup refused to create a CA"
    finally:
        proc.kill()
        proc.wait(timeout=30)
    shutil.rmtree(work, ignore_errors=True)   # kept only when the test failed above
    record_boot("q35 virtio, -rtc base=2015-01-01", "first boot refused (clock before the build)", seconds)
