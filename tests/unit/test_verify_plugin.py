"""`invoke verify` hands the booted VM to tests/vm through a pytest plugin (the config's stash),
not a module global: the checks get exactly the target verify booted, and without verify they
skip, saying how to run them."""
import subprocess
import sys

from image.config import PROJECT_ROOT
from image.vm.verify import TargetPlugin, target_key


def test_the_plugin_hands_the_target_to_the_session(tmp_path):
    import pytest

    (tmp_path / "test_sample.py").write_text(
        "from image.vm.verify import target_key\n\n"
        "def test_sees_the_target(request):\n"
        "    assert request.config.stash[target_key()] == 'the booted appliance'\n")
    code = pytest.main([str(tmp_path / "test_sample.py"), "-q", "-p", "no:cacheprovider", f"--rootdir={tmp_path}"],
                       plugins=[TargetPlugin("the booted appliance")])
    assert code == 0
    assert target_key() is target_key()   # one key for both sides


def test_tests_vm_alone_skip_and_say_how_to_run_them():
    result = subprocess.run([sys.executable, "-m", "pytest", "tests/vm/test_step_cli.py", "-q", "-rs",
                             "-p", "no:cacheprovider"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipped" in result.stdout and "invoke verify --image FILE" in result.stdout
