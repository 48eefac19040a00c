"""Fixtures of the boot matrix: they live in boot_helpers.py (see there)."""
from boot_helpers import (  # noqa: F401
    boot_work_cleanup,
    first_boot,
    libvirt,
    pytest_terminal_summary,
)
