"""Fixtures and session set-up more than one tier uses."""
import os
import signal
import threading
from pathlib import Path

import pytest


def _hypothesis_profile():
    """In CI (CI=true) the property tests draw the same examples every run (derandomize): a landing
    is judged on a known set; off CI each run explores new ones, as a fuzzer should."""
    try:
        from hypothesis import settings
    except ImportError:   # the newest-userland tier's root may lack it; its tests then skip
        return
    if os.environ.get("CI"):
        settings.register_profile("ci", derandomize=True)
        settings.load_profile("ci")


_hypothesis_profile()


def pytest_configure(config):
    """Started in the background by a non-interactive shell (`make test &`, nohup), pytest inherits
    SIGINT *ignored*, and so would every program a test starts: the Ctrl-C tests (the wizard, the
    build) would wait for an interrupt that never comes. A handled SIGINT is reset to the default
    in each child, as a terminal's programs get it."""
    # Only the main thread may set a handler: `invoke soak` runs the tests/vm checks with pytest.main
    # from a worker thread, and its session keeps whatever SIGINT handling the command was given.
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # SIGTERM (`kill`, a CI job's timeout) ends the session as Ctrl-C does, so the fixtures' teardowns
    # run: Python's default exits at once and leaves the VMs, mounts, loop devices and daemons behind.
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def debian_image() -> Path:
    """The Debian test qcow2 (tests/image_fixture.py): built once per code version, minutes."""
    if os.geteuid() != 0:
        pytest.skip("building the Debian image needs root (mmdebstrap, loop devices)")
    from image_fixture import ensure_debian_test_image  # only when a test needs the image
    return ensure_debian_test_image()


# ---- time per tier: what the README's tier table quotes, measured by every run

_tier_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report):
    """Setup, call and teardown of each test, summed per tier (tests/<tier>/...); a session
    fixture such as the image build counts in the tier of the first test that needs it."""
    parts = report.nodeid.split("/")
    tier = parts[1] if len(parts) > 2 and parts[0] == "tests" else parts[0].split("::")[0]
    _tier_seconds[tier] = _tier_seconds.get(tier, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if not _tier_seconds:
        return
    terminalreporter.write_sep("-", "time per tier (setup + call + teardown)")
    for tier, seconds in sorted(_tier_seconds.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{tier:<14}{seconds / 60:6.1f} min  ({seconds:.0f} s)")
