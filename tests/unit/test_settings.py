"""Environment knobs and the task wrapper: one line and exit status 2 for a bad value, no traceback."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from image import settings
from image.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
INVOKE = Path(sys.executable).parent / "invoke"


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf"])
def test_a_bad_timeout_names_the_variable_and_what_is_allowed(monkeypatch, value):
    monkeypatch.setenv("CA_VERIFY_SSH_TIMEOUT", value)
    with pytest.raises(UserError) as caught:
        settings.verify_ssh_timeout()
    assert str(caught.value).startswith(f"CA_VERIFY_SSH_TIMEOUT: {value!r} is not a number of seconds")
    assert caught.value.exit_code == 2


def test_unset_or_empty_gives_the_default_and_a_number_is_taken(monkeypatch):
    monkeypatch.delenv("CA_VERIFY_READY_TIMEOUT", raising=False)
    assert settings.verify_ready_timeout() == 900
    monkeypatch.setenv("CA_VERIFY_READY_TIMEOUT", " ")
    assert settings.verify_ready_timeout() == 900
    monkeypatch.setenv("CA_APPLIANCE_INSTALL_TIMEOUT", "120.5")
    assert settings.install_timeout(60) == 120.5


def test_invoke_verify_with_a_bad_knob_is_one_line_and_exit_2(tmp_path):
    env = dict(os.environ, CA_VERIFY_SSH_TIMEOUT="soon")
    result = subprocess.run([str(INVOKE), "verify", "--image", str(tmp_path / "none.qcow2")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: CA_VERIFY_SSH_TIMEOUT: 'soon' is not a number of seconds "
                                                  "(a positive number, e.g. 600)"]


def test_a_reader_that_goes_away_ends_a_task_quietly(tmp_path):
    # `| true` closes the pipe before the task writes: no BrokenPipeError traceback on stderr
    result = subprocess.run(f"{INVOKE} render --out {tmp_path}/r | true",
                            shell=True, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr


def test_a_short_command_that_fails_is_a_failed_step_with_what_it_said(tmp_path):
    from image.errors import StepFailed
    from image.runner import checked_output
    with pytest.raises(StepFailed) as caught:
        checked_output("read partitions", ["sfdisk", "--json", str(tmp_path / "no-such-disk.raw")])
    message = str(caught.value)
    assert "read partitions" in message and "sfdisk --json" in message and "exited" in message
    assert "no-such-disk.raw" in message and "\n" not in message
    with pytest.raises(StepFailed, match="not-a-tool is not installed"):
        checked_output("probe", ["not-a-tool"])
    assert checked_output("echo", ["echo", "fine"]) == "fine\n"
