"""The operating system bases an appliance can be built on, each a module behind one interface.

A base module (image/bases/debian.py, the image/bases/fedora/ package) implements `Base` below.
It installs the packages and the artifacts, extracts the payload tarball at / keeping the
distribution's directory symlinks, runs the guest's `ca-appliance provision --base <name>` inside
the target root (users, units, initramfs, generalisation: one program for every base), and leaves
a bootable raw disk image in workdir.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from image.config import BASES
from image.errors import UserError


@dataclass
class BaseResult:
    raw: Path                    # the bootable raw disk image the base wrote
    release: str                 # e.g. "Debian 12.11 (bookworm)", for the manifest
    packages: list[str] = field(default_factory=list)   # "name version" of every installed package


@runtime_checkable
class Base(Protocol):
    """What every base module provides (tests/unit/test_bases.py checks both)."""
    REQUIRED_TOOLS: dict[str, tuple[str, str]]   # {command: (apt package, dnf package)}, checked before any work
    NEEDS_ROOT: bool                             # loop devices, mounts, chroots
    PROVISION_BASE: str                          # the `ca-appliance provision --base` value it runs

    def check_host(self) -> None:
        """What REQUIRED_TOOLS cannot express; called before any work (UserError naming the fix)."""

    def build_raw(self, cfg, *, workdir: Path, runner, artifacts: list, payload: Path,
                  use_cache: bool = True) -> BaseResult:
        """Install the base, lay the payload, provision, and write workdir's bootable raw disk;
        use_cache=False rebuilds whatever the base caches between builds (`invoke build --no-cache`)."""


def get_base(name: str) -> Base:
    """The module implementing base `name`."""
    if name not in BASES:
        raise UserError(f"base: {name!r} is not one of: {', '.join(BASES)}")
    return importlib.import_module(f"image.bases.{name}")
