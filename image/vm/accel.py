"""Which QEMU accelerator to use: KVM only when it can really work here, TCG otherwise.

"Usable" means all of: /dev/kvm opens read-write, it answers the KVM_GET_API_VERSION ioctl with
the stable API (12), and the CPU advertises hardware virtualization (vmx or svm in
/proc/cpuinfo). A nested VM often has /dev/kvm without the CPU flags, and its guests then hang,
so the device alone is not enough. The Anaconda install (fedora base) and `invoke verify` both
decide here.
"""
from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from image.errors import UserError

ACCELS = ("auto", "kvm", "tcg")
KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO, 0x00)
KVM_API_VERSION = 12          # the only stable KVM API since Linux 2.6.22


@dataclass(frozen=True)
class AccelChoice:
    accel: str   # 'kvm' or 'tcg'
    reason: str  # one line: why this one


def kvm_problem(kvm_device: str | Path = "/dev/kvm", cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """Why KVM cannot be used here, or None when it can."""
    try:
        flags = set()
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                flags.update(line.partition(":")[2].split())
    except OSError as e:
        return f"{cpuinfo} cannot be read ({e.strerror})"
    if not flags & {"vmx", "svm"}:
        return "the CPU has no hardware virtualization (no vmx/svm flag in /proc/cpuinfo; nested VM?)"
    try:
        fd = os.open(kvm_device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"{kvm_device} cannot be opened ({e.strerror})"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as e:
        return f"{kvm_device} is not a KVM device ({e.strerror})"
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return f"{kvm_device} speaks KVM API {version}, not {KVM_API_VERSION}"
    return None


def choose_accel(requested: str = "auto", *, kvm_device: str | Path = "/dev/kvm",
                 cpuinfo: str | Path = "/proc/cpuinfo") -> AccelChoice:
    """The accelerator for `requested` ('auto', 'kvm' or 'tcg') and why. Asking for 'kvm' where it
    cannot work is a user error (a hung guest later would be much harder to understand)."""
    if requested not in ACCELS:
        raise UserError(f"--accel: {requested!r} is not one of: {', '.join(ACCELS)}")
    if requested == "tcg":
        return AccelChoice("tcg", "tcg was asked for")
    problem = kvm_problem(kvm_device, cpuinfo)
    if problem is None:
        return AccelChoice("kvm", f"{kvm_device} is usable and the CPU has vmx/svm")
    if requested == "kvm":
        raise UserError(f"--accel: 'kvm' is not usable here: {problem}; use auto or tcg")
    return AccelChoice("tcg", f"KVM is not usable: {problem}")

