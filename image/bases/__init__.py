"""The operating system bases an appliance can be built on, each a module behind one interface.

A base module (image/bases/<name>.py) exposes:
  REQUIRED_TOOLS: {command: (apt package, dnf package)}  checked before any work
  NEEDS_ROOT: bool                                       loop devices, mounts, chroots
  build_raw(cfg, *, workdir, runner, artifacts, payload) -> BaseResult
It installs the artifacts and extracts the payload tarball at / the same way on every base,
and leaves a bootable raw disk image in workdir.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from image.config import BASES
from image.errors import UserError


@dataclass
class BaseResult:
    raw: Path                    # the bootable raw disk image the base wrote
    release: str                 # e.g. "Debian 12.11 (bookworm)", for the manifest
    packages: list[str] = field(default_factory=list)   # "name version" of every installed package


def get_base(name: str) -> ModuleType:
    """The module implementing base `name`."""
    if name not in BASES:
        raise UserError(f"base: {name!r} is not one of: {', '.join(BASES)}")
    return importlib.import_module(f"image.bases.{name}")
