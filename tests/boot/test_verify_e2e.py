"""`invoke verify` end to end on the Debian appliance (the pinned step-ca 0.30.2 and step 0.30.6 built
from their Go modules), under TCG: once with an unattended first boot, once answering the console
wizard. Slow: each run boots the VM four times (first boot, reboot, kernel panic, power cut)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
INVOKE = Path(sys.executable).parent / "invoke"
RUN_TIMEOUT = 1800  # per verify run; generous for TCG on a busy 2-core machine


def run_verify(image, *extra):
    return subprocess.run([str(INVOKE), "verify", "--image", str(image), "--accel", "tcg", *extra],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def assert_passed_with_a_table(result):
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert re.search(r"^result\s+check\s+detail$", output, re.MULTILINE), "no summary table"
    assert re.search(r"^PASS\s+test_persistence::test_after_a_power_cut", output, re.MULTILINE)
    assert re.search(r"^PASS\s+test_persistence::test_a_kernel_panic_reboots", output, re.MULTILINE)
    assert not re.search(r"^(FAIL|ERROR)\s", output, re.MULTILINE)
    assert (PROJECT_ROOT / "build/verify-junit.xml").is_file()


@pytest.mark.slow
def test_verify_unattended_first_boot(debian_image):
    result = run_verify(debian_image)
    assert_passed_with_a_table(result)
    # the first boot is cut (QEMU SIGKILLed) after setup's commit; the next boot finishes it
    assert "power cut during first-boot setup" in result.stdout
    assert re.search(r"^PASS\s+test_appliance::test_a_first_boot_cut_after_the_commit", result.stdout, re.MULTILINE)


@pytest.mark.slow
def test_verify_console_wizard_first_boot(debian_image):
    result = run_verify(debian_image, "--interactive")
    assert_passed_with_a_table(result)
    assert "wizard: a wrong answer was refused and asked again" in result.stdout


@pytest.mark.slow
def test_verify_fails_with_exit_1_and_keeps_logs_when_the_image_does_not_boot(tmp_path):
    """A disk with nothing bootable on it: no SSH ever, so exit 1, the table, and the serial log kept."""
    blank = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "1G"], check=True)
    result = subprocess.run([str(INVOKE), "verify", "--image", str(blank), "--accel", "tcg"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, CA_VERIFY_SSH_TIMEOUT="20"))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert re.search(r"^FAIL\s+boot and first boot\s+wait for SSH failed", output, re.MULTILINE), output
    kept = re.search(r"logs kept in (\S+)", output)
    assert kept and (Path(kept.group(1)) / "serial.log").is_file(), output


def test_verify_refuses_a_missing_image_with_exit_2(tmp_path):
    result = subprocess.run([str(INVOKE), "verify", "--image", str(tmp_path / "none.qcow2")],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --image: {str(tmp_path / 'none.qcow2')!r} does not exist (give a built .qcow2 image)"]
