"""Accelerator choice: the real host's answer, and each reason KVM is refused (cpuinfo and device
files given explicitly, since the host has only one of each)."""
import os
from pathlib import Path

import pytest

from image.errors import UserError
from image.vm.accel import choose_accel, kvm_problem

WITH_VMX = "processor\t: 0\nflags\t\t: fpu vme de pse vmx sse2\n"
WITHOUT = "processor\t: 0\nflags\t\t: fpu vme de pse hypervisor sse2\n"


def test_on_this_host_auto_answers_kvm_or_tcg_with_a_reason():
    choice = choose_accel("auto")
    assert choice.accel in ("kvm", "tcg")
    assert choice.reason
    if choice.accel == "kvm":
        assert kvm_problem() is None
    else:
        assert "KVM is not usable" in choice.reason


def test_tcg_is_always_honoured():
    assert choose_accel("tcg").accel == "tcg"


def test_cpu_without_vmx_or_svm_means_tcg(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(WITHOUT)
    choice = choose_accel("auto", cpuinfo=cpuinfo)
    assert choice.accel == "tcg"
    assert "vmx/svm" in choice.reason


def test_missing_kvm_device_means_tcg(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(WITH_VMX)
    choice = choose_accel("auto", kvm_device=tmp_path / "no-kvm", cpuinfo=cpuinfo)
    assert choice.accel == "tcg"
    assert "cannot be opened" in choice.reason


def test_a_file_that_is_not_a_kvm_device_means_tcg(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(WITH_VMX)
    fake = tmp_path / "kvm"
    fake.write_bytes(b"")
    choice = choose_accel("auto", kvm_device=fake, cpuinfo=cpuinfo)
    assert choice.accel == "tcg"
    assert "not a KVM device" in choice.reason


@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm on this host to open")
def test_real_kvm_device_with_vmx_flags_is_usable(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(WITH_VMX)
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError as e:
        pytest.skip(f"/dev/kvm exists but cannot be opened by this user ({e.strerror})")
    assert choose_accel("auto", cpuinfo=cpuinfo).accel == "kvm"


def test_kvm_asked_for_where_it_cannot_work_is_a_user_error(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(WITHOUT)
    with pytest.raises(UserError) as e:
        choose_accel("kvm", cpuinfo=cpuinfo)
    assert "'kvm' is not usable here" in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_accel_is_a_user_error():
    with pytest.raises(UserError, match="not one of: auto, kvm, tcg"):
        choose_accel("hvf")


def test_unreadable_cpuinfo_is_a_reason_not_a_crash(tmp_path):
    assert "cannot be read" in kvm_problem(cpuinfo=Path(tmp_path / "missing"))
