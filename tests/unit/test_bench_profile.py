"""The first-boot profile: the guest's timing lines, as the bench reads them back from the journal,
and the bench's one-line option errors."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from image.bench import bench
from image.errors import UserError

GUEST_LIB = Path(__file__).resolve().parents[2] / "overlay/usr/lib/ca-appliance"
ROOT = Path(__file__).resolve().parents[2]


def test_guest_timing_lines_are_one_per_step_and_the_bench_sums_them():
    # under the appliance's own python, as on the guest
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    script = (
        "import time\n"
        "from ca_appliance import timing, system\n"
        "timing.set_sink(print)\n"
        "with timing.timed('generate CA keys and certificates'):\n"
        "    time.sleep(0.05)\n"
        "system.run('open firewall', ['true'])\n"
        "system.run('open firewall', ['sh', '-c', 'sleep 0.1'])\n"
        "try:\n"
        "    with timing.timed('install root in trust store'):\n"
        "        raise OSError('boom')\n"
        "except OSError:\n"
        "    pass\n"
        "timing.log_startup()\n")
    out = subprocess.run([python, "-c", script], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(GUEST_LIB)}).stdout
    lines = out.splitlines()
    assert len(lines) == 5 and all(line.startswith("step ") for line in lines)
    steps = bench.step_durations(out)
    assert 0.05 <= steps["generate CA keys and certificates"] < 2
    assert 0.1 <= steps["open firewall"] < 3           # two commands, one step
    assert "install root in trust store (failed)" in steps
    assert 0 <= steps["python start-up"] < 30
    assert bench.step_durations("unrelated line\nstep x: notanumber s\n") == {}


@pytest.mark.parametrize("args, message", [
    (["--clients", "many"], "--clients: 'many' is not a whole number"),
    (["--clients", "0"], "--clients: 0 is less than 1"),
    (["--seconds", "soon"], "--seconds: 'soon' is not a number of seconds"),
])
def test_bench_option_errors_are_one_line_with_exit_status_2(args, message):
    proc = subprocess.run([str(ROOT / ".venv/bin/invoke"), "bench", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(f"error: {message}")


def test_parse_helpers():
    assert bench.parse_count("--clients", " 8 ") == 8
    assert bench.parse_seconds("--seconds", "2.5") == 2.5
    with pytest.raises(UserError):
        bench.parse_seconds("--seconds", "0")


def test_the_table_shows_the_profile_and_the_targets():
    table = bench.render_table({"qcow2_mb": 220.0, "first_boot_ready_s": 70.0,
                                "firstboot_steps": {"open firewall": 12.5}}, "tcg")
    assert "<= 230" in table and "<= 75" in table
    assert "first-boot step: open firewall (s)" in table and "12.5" in table
