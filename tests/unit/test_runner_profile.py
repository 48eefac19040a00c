"""The build profile: every named step's duration is recorded (and summed when a name repeats),
so the manifest and `invoke bench` report where a build spends its time."""
import io

import pytest

from image.errors import StepFailed
from image.runner import Runner


def test_each_step_is_timed_in_order_and_a_repeated_name_adds_up(tmp_path):
    runner = Runner(tmp_path / "build.log", out=io.StringIO())
    with runner.step("bootstrap"):
        runner.run(["sleep", "0.3"])
    with runner.step("assemble"):
        pass
    with runner.step("bootstrap"):
        runner.run(["sleep", "0.2"])
    assert list(runner.durations) == ["bootstrap", "assemble"]
    assert runner.durations["bootstrap"] >= 0.5 and runner.durations["assemble"] < 0.3
    assert "bootstrap: done in" in (tmp_path / "build.log").read_text()


def test_a_failed_step_is_timed_too(tmp_path):
    runner = Runner(tmp_path / "build.log", out=io.StringIO())
    with pytest.raises(StepFailed), runner.step("doomed"):
        runner.run(["false"])
    assert "doomed" in runner.durations
