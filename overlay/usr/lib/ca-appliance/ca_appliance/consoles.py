"""The first-boot wizard offered on every console at once (VGA tty1 and the serial ttyS0).

vSphere and VirtualBox users look at the VGA console, libvirt `--graphics none` users and
`invoke verify --interactive` at the serial one, and /dev/console is only one of them. So the
wizard is offered on each console that exists; the first one where someone presses Enter runs
it, and the others say where setup went on.
"""
import os
import select
import termios

from . import markers

BANNER = ("\nCertificate authority appliance: this appliance is not configured yet.\n"
          + markers.WIZARD_OFFER.replace("{console}", "{name}") + "\n")
ELSEWHERE = "\nSetup is running on {name}; the login prompt here comes when it is done.\n"


class Terminal:
    """One console, opened without becoming our controlling terminal (the gettys get it later)."""

    def __init__(self, name, fd):
        self.name = name
        self.fd = fd

    def write(self, text):
        data = text.encode("utf-8", "replace")  # ONLCR (set below) turns \n into \r\n
        while data:
            data = data[os.write(self.fd, data):]

    def flush(self):
        termios.tcdrain(self.fd)

    def isatty(self):
        return True

    def _read_line(self):
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(self.fd, 1024)
            if not chunk:
                raise EOFError(f"{self.name} closed")
            line += chunk
        return line.decode("utf-8", "replace").rstrip("\r\n")

    def input(self, prompt=""):
        self.write(prompt)
        return self._read_line()

    def getpass(self, prompt="Password: "):
        """Read a line without echoing it."""
        attrs = termios.tcgetattr(self.fd)
        quiet = list(attrs)
        quiet[3] &= ~termios.ECHO
        termios.tcsetattr(self.fd, termios.TCSAFLUSH, quiet)
        try:
            return self.input(prompt)
        finally:
            termios.tcsetattr(self.fd, termios.TCSAFLUSH, attrs)
            self.write("\n")

    def close(self):
        os.close(self.fd)


def _line_mode(fd):
    """Canonical input with echo and CR->NL: what a person typing a line at a console expects."""
    attrs = termios.tcgetattr(fd)
    attrs[0] |= termios.ICRNL
    attrs[1] |= termios.OPOST | termios.ONLCR
    attrs[3] |= termios.ICANON | termios.ECHO | termios.ECHOE
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    termios.tcflush(fd, termios.TCIFLUSH)  # keystrokes from before the question do not answer it


def open_terminals(names):
    """The consoles among `names` (tty1, ttyS0 or full paths) that exist and are terminals.
    A serial port with no UART behind it fails to open (EIO) and is left out."""
    terminals = []
    for name in names:
        path = name if name.startswith("/") else f"/dev/{name}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        except OSError:
            continue
        try:
            _line_mode(fd)
        except termios.error:
            os.close(fd)
            continue
        terminals.append(Terminal(name, fd))
    return terminals


def choose_terminal(terminals):
    """Offer the wizard on every terminal; return the one where Enter is pressed first."""
    for terminal in terminals:
        terminal.write(BANNER.format(name=terminal.name))
    by_fd = {terminal.fd: terminal for terminal in terminals}
    while True:
        ready, _, _ = select.select(list(by_fd), [], [])
        for fd in ready:
            try:
                by_fd[fd]._read_line()
            except (EOFError, OSError):
                del by_fd[fd]  # a console that went away is no longer offered
                if not by_fd:
                    raise EOFError("every console closed") from None
                continue
            chosen = by_fd[fd]
            for other in terminals:
                if other is not chosen:
                    other.write(ELSEWHERE.format(name=chosen.name))
            return chosen
