"""Where a secret (a generated CA password, an offline root key and its passphrase) may be shown.

Once, on the terminal the operator uses: the one setup runs on (the wizard's own console, or the
shell an admin ran it from), else, when setup runs unattended at first boot, the VGA console tty1
(what vSphere's and VirtualBox's console windows show). Never /dev/console: the kernel's console
is the LAST console= of its command line, which is the serial port on the images (console=ttyS0)
and hypervisors log serial ports to files. Never standard output when it is not a terminal: under
systemd that is the journal. When no terminal is there, the caller says where the secret lives.
"""
import os

VGA_CONSOLE = "/dev/tty1"


def operator_terminal(out, use_system):
    """A writable channel for a secret, or None: `out` when it is a terminal; unattended on the real
    system, the VGA console when it exists (the caller closes a channel that is not `out`)."""
    if out.isatty():
        return out
    if not use_system:
        return None
    return _vga_console()


def _vga_console():
    try:
        fd = os.open(VGA_CONSOLE, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    if not os.isatty(fd):
        os.close(fd)
        return None
    return os.fdopen(fd, "w", encoding="utf-8", errors="replace")


def describe(channel, out):
    """How the log names where a secret went: never the secret."""
    return "this terminal" if channel is out else f"the VGA console ({VGA_CONSOLE.removeprefix('/dev/')})"
