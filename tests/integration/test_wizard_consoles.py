"""First boot with nobody's answers: the wizard is offered on every console (VGA and serial) at
once, runs on the one where Enter is pressed, and the others say where setup went on.

Two pseudo-terminals stand in for tty1 and ttyS0; the real CLI runs under Debian's python3 with
no terminal of its own, as the first-boot unit runs it.
"""
import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers.wizard import CLI, GUEST_PYTHON, NEEDS_GUEST_PYTHON, guest_env, walk
from pexpect import fdpexpect

pytestmark = pytest.mark.skipif(not Path(GUEST_PYTHON).exists(), reason=NEEDS_GUEST_PYTHON)


@pytest.fixture
def consoles():
    pairs = [os.openpty() for _ in range(2)]
    yield [(fdpexpect.fdspawn(master, encoding="utf-8", timeout=30), os.ttyname(slave)) for master, slave in pairs]
    for master, slave in pairs:
        for fd in (master, slave):
            try:
                os.close(fd)
            except OSError:
                pass


def start_setup(prefix, names):
    return subprocess.Popen([GUEST_PYTHON, str(CLI), "setup", "--prefix", str(prefix), "--no-system",
                             "--consoles", ",".join(names)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=guest_env())


def test_wizard_runs_on_the_console_where_enter_is_pressed(tmp_path, consoles):
    (vga, vga_name), (serial, serial_name) = consoles
    prefix = tmp_path / "root"
    serial.logfile_read = transcript = io.StringIO()
    proc = start_setup(prefix, ["/dev/nonexistent-tty", vga_name, serial_name])
    try:
        for console, name in consoles:
            console.expect_exact(f"Press Enter to start the setup wizard on this console ({name})")
        serial.sendline("")
        vga.expect_exact(f"Setup is running on {serial_name}")
        walk(serial, {"hostname": "serial.lab.example", "name": "Serial CA", "generate": "n"}, stop="ssh")
        for prompt in ("password", "again"):
            serial.expect(f"(?i){prompt}[^:]*: ")
            serial.sendline("typed on the serial console")
        walk(serial, start="ssh", shown={"admin_key": "none"})
        serial.expect_exact("Apply? [Y/n]: ")
        serial.sendline("")
        serial.expect_exact("Your CA is ready.")
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "typed on the serial console" not in transcript.getvalue()  # the password was not echoed
    config = json.loads((prefix / "etc/step-ca/config/ca.json").read_text())
    assert config["dnsNames"][0] == "serial.lab.example"
    assert (prefix / "etc/step-ca/password.txt").read_text().strip() == "typed on the serial console"


def test_no_console_and_no_answers_is_one_clear_error(tmp_path):
    proc = start_setup(tmp_path / "root", ["/dev/nonexistent-tty"])
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip().splitlines() == [
        "ca-appliance: setup: none of the consoles '/dev/nonexistent-tty' can be opened, and no unattended answers"]
    assert not (tmp_path / "root/etc/step-ca").exists()
