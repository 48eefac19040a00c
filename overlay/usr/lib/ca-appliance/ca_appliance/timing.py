"""How long each setup step takes, one line per step in the journal: the first boot is profiled
from the appliance's own record (`journalctl -t ca-appliance-timing -o cat`), not guessed.

Lines go to syslog (journald's /dev/log), never to the console the wizard runs on; where there
is no syslog socket (tests, --prefix runs on a build host) they are silently dropped, unless a
sink is given.
"""
import sys
import syslog
import time
from contextlib import contextmanager

from .markers import TIMING_IDENT as IDENT

# `step <name>: <seconds> s [failed]`; bench sums the lines of one name
LINE_FORMAT = "step {name}: {seconds:.2f} s{failed}"

_sink = None


def set_sink(sink):
    """Send the lines to `sink(text)` instead of syslog (tests); None restores syslog."""
    global _sink
    _sink = sink


def _emit(text):
    if _sink is not None:
        _sink(text)
        return
    try:
        syslog.openlog(IDENT, 0, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_INFO, text)
    except OSError:
        pass


def format_line(name, seconds, failed=False):
    return LINE_FORMAT.format(name=name, seconds=seconds, failed=" failed" if failed else "")


@contextmanager
def timed(name):
    """Log how long the block took (also when it fails, marked so)."""
    start = time.monotonic()
    failed = True
    try:
        yield
        failed = False
    finally:
        _emit(format_line(name, time.monotonic() - start, failed))


def log_startup(name="python start-up"):
    """The interpreter's and the imports' share: from process start to now (Linux /proc)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        import os
        seconds = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return
    if seconds >= 0:
        _emit(format_line(name, seconds))


if __name__ == "__main__":  # pragma: no cover - manual check
    set_sink(print)
    with timed("example"):
        time.sleep(0.1)
    sys.exit(0)
