"""The environment variables the builder reads, parsed in one place (README: "Environment variables").

Each is read when a task needs it, never at import, so a bad value ends that task with one line
naming the variable, its value and what is allowed (exit status 2), not a traceback.
"""
from __future__ import annotations

import math
import os

from image.errors import UserError


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (0 < value < math.inf):
        raise UserError(f"{name}: {raw!r} is not a number of seconds (a positive number, e.g. 600)")
    return value


def verify_ssh_timeout() -> float:
    """How long `verify` waits for SSH on a booting appliance."""
    return _seconds("CA_VERIFY_SSH_TIMEOUT", 300)


def verify_ready_timeout() -> float:
    """How long `verify` waits for the first boot to finish and the CA to answer."""
    return _seconds("CA_VERIFY_READY_TIMEOUT", 900)


def install_timeout(default: float) -> float:
    """How long the Fedora installer may run (default: by accelerator)."""
    return _seconds("CA_APPLIANCE_INSTALL_TIMEOUT", default)


def installer_accel() -> str:
    """The accelerator asked for the Fedora installer VM: auto, kvm or tcg (checked by accel.choose_accel)."""
    return os.environ.get("CA_APPLIANCE_ACCEL", "").strip() or "auto"
