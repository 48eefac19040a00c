"""`invoke step-ca-from-source` when Go fails: the real Go toolchain on a main.go that does not
compile (a second, not the minute the real build takes). The working build is tested in
tests/integration/test_step_ca_from_source.py."""
import shutil

import pytest

from image import stepca_source
from image.errors import StepFailed

pytestmark = pytest.mark.skipif(shutil.which("go") is None or not stepca_source.COMMANDS_PKG.is_dir(),
                                reason="golang-go and golang-github-smallstep-certificates-dev are not installed")


def test_a_failed_go_build_names_the_step_shows_gos_words_and_caches_nothing(tmp_path, monkeypatch):
    broken = tmp_path / "main.go"
    broken.write_text("package main\n\nfunc main() { undefinedCall() }\n")
    monkeypatch.setattr(stepca_source, "MAIN_GO", broken)
    monkeypatch.setenv("CA_APPLIANCE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(StepFailed) as failure:
        stepca_source.build_step_ca_from_source(log=lambda *_: None)
    message = str(failure.value)
    assert message.startswith("step-ca-from-source failed: go exited with status")
    assert "undefined: undefinedCall" in message      # Go's own words, not just a status
    assert str(tmp_path / "cache/source/build.log") in message
    assert not stepca_source.source_binary_path().exists()   # no half-built binary counts as cached
