"""tasks.py's wrapper: a task killed with SIGTERM (`kill`, a CI job's timeout) stops as Ctrl-C stops it,
through its cleanup, instead of leaving its VMs and daemons behind (a real process, a real signal)."""
import os
import signal
import subprocess
import sys
import time

from image.config import PROJECT_ROOT


def task_script(*body: str) -> str:
    """A child process's program: one function wrapped as tasks.py wraps every task, then called."""
    return (f"import sys, time\nsys.path.insert(0, {str(PROJECT_ROOT)!r})\nimport tasks\n"
            "@tasks.reports_errors\ndef task():\n" + "".join(f"    {line}\n" for line in body) + "task()\n")


def test_sigterm_runs_the_tasks_cleanup_and_exits_143(tmp_path):
    cleaned, started = tmp_path / "cleaned", tmp_path / "started"
    script = task_script("try:",
                         f"    open({str(started)!r}, 'w').close()",
                         "    time.sleep(60)",
                         "finally:",
                         f"    open({str(cleaned)!r}, 'w').close()   # what a task's finally does: kill its VMs")
    child = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert child.poll() is None and time.monotonic() < deadline, "the task did not start"
            time.sleep(0.05)
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 143
    assert err.strip() == "terminated"
    assert cleaned.exists()


def test_a_tasks_progress_reaches_a_redirected_log_as_it_is_printed(tmp_path):
    """`nohup invoke soak > log`: stdout is a file, which Python buffers by 8 KiB; without line
    buffering a campaign's 'cut 18: survived' would show only with the next check's output."""
    log = tmp_path / "log"
    script = task_script("print('  cut 1: survived')", "time.sleep(60)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}   # as a user's shell has it
    with open(log, "w") as out:
        child = subprocess.Popen([sys.executable, "-c", script], stdout=out, cwd=PROJECT_ROOT, env=env)
    try:
        deadline = time.monotonic() + 30
        while "cut 1: survived" not in log.read_text():
            assert child.poll() is None and time.monotonic() < deadline, "the line never reached the log"
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
