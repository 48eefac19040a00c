"""Secrets are shown once, on the terminal the operator uses: setup's own terminal, else (unattended)
the VGA console tty1; never /dev/console (the serial port on the images: console=ttyS0 is last, and
hypervisors log it), never standard output when it is a log. Real pseudo-terminals stand for tty1."""
import io
import os
import pty

import pytest
from ca_appliance import apply, showsecret

SECRET = "QZXsecret-4f7a9c2e1b8d6a3f0e5c7b9a"


@pytest.fixture
def vga(monkeypatch):
    """A real terminal standing where /dev/tty1 is: yields a reader of what it was shown."""
    master, slave = pty.openpty()
    monkeypatch.setattr(showsecret, "VGA_CONSOLE", os.ttyname(slave))

    def shown():
        os.set_blocking(master, False)
        try:
            return os.read(master, 65536).decode()
        except BlockingIOError:
            return ""
    yield shown
    os.close(master)
    os.close(slave)


@pytest.fixture
def no_console_opened(monkeypatch):
    """Fails the test if anything opens /dev/console."""
    real_open = os.open

    def guarded(path, *args, **kwargs):
        assert str(path) != "/dev/console", "a secret went to /dev/console"
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(os, "open", guarded)


def test_unattended_the_password_goes_to_the_vga_console_and_the_log_says_where_it_is_kept(
        tmp_path, vga, no_console_opened):
    journal = io.StringIO()
    apply._show_on_console(f"CA password: {SECRET}", journal, True, tmp_path / "password.txt")
    assert SECRET in vga()
    log = journal.getvalue()
    assert SECRET not in log
    assert "shown on the VGA console (" in log and f"sudo cat {tmp_path / 'password.txt'}" in log


def test_unattended_without_a_vga_console_the_password_is_shown_nowhere(tmp_path, monkeypatch, no_console_opened):
    monkeypatch.setattr(showsecret, "VGA_CONSOLE", str(tmp_path / "no-tty1"))
    journal = io.StringIO()
    apply._show_on_console(f"CA password: {SECRET}", journal, True, tmp_path / "password.txt")
    assert SECRET not in journal.getvalue() and "sudo cat" in journal.getvalue()
    assert "shown on" not in journal.getvalue()


def test_a_vga_path_that_is_no_terminal_is_not_used(tmp_path, monkeypatch):
    plain = tmp_path / "tty1"
    plain.write_text("")
    monkeypatch.setattr(showsecret, "VGA_CONSOLE", str(plain))
    assert showsecret.operator_terminal(io.StringIO(), use_system=True) is None
    assert plain.read_text() == ""


def test_without_the_system_a_log_gets_no_channel(vga):
    assert showsecret.operator_terminal(io.StringIO(), use_system=False) is None
    assert vga() == ""


def test_setups_own_terminal_is_used_as_it_is(vga):
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    terminal = Terminal()
    assert showsecret.operator_terminal(terminal, use_system=True) is terminal
    apply._show_on_console(f"CA password: {SECRET}", terminal, True, "/etc/step-ca/password.txt")
    assert terminal.getvalue().count(SECRET) == 1 and vga() == ""


def test_offline_root_key_unattended_goes_to_the_vga_console_only(vga, no_console_opened):
    journal = io.StringIO()
    channel = apply._secret_channel(journal, use_system=True)
    assert channel is not journal and channel is not None
    material = type("Material", (), {"root_key_pem": b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nQZXkey\n"})()
    try:
        apply._deliver_root_key(material, SECRET, None, channel, journal)
    finally:
        channel.close()
    shown = vga()
    assert SECRET in shown and "QZXkey" in shown
    assert "QZX" not in journal.getvalue() and "shown on the VGA console (" in journal.getvalue()
