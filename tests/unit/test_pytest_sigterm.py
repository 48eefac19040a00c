"""A test session that gets SIGTERM (`kill`, a CI job's timeout) runs its fixtures' teardowns, as
after Ctrl-C (tests/conftest.py); Python's default would exit at once and leave VMs, mounts, loop
devices and daemons behind (a killed CI run left the image tier's mount and loop device)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_ends_the_session_through_the_teardowns(tmp_path):
    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              str(PROJECT_ROOT / "tests/helpers/sigterm_probe.py")], cwd=PROJECT_ROOT,
                             env=dict(os.environ, CA_TEST_SIGTERM_PROBE=str(marker)),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (marker.exists() and marker.read_text() == "set up\n"):
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()[0]
            time.sleep(0.1)
        child.send_signal(signal.SIGTERM)
        output = child.communicate(timeout=60)[0]
    finally:
        child.kill()
    assert marker.read_text() == "torn down\n", output
    assert child.returncode == 2, output   # pytest's "interrupted"
