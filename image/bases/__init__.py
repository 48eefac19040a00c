"""The operating system bases an appliance can be built on, each a module behind one interface.

A base module (image/bases/debian.py, the image/bases/fedora/ package) implements `Base` below:
every host-side fact about its distribution (tools, package format, security-update units and
configuration, OVA guest OS) and the build itself. It installs the packages and the artifacts,
extracts the payload tarball at / keeping the distribution's directory symlinks, runs the guest's
`ca-appliance provision --base <name>` inside the target root (users, units, initramfs,
generalisation: one program for every base, its distribution facts one row of provision.py's
DISTROS), and leaves a bootable raw disk image in workdir.

REGISTRY names the bases; a base is imported when first asked for, so this module imports
nothing of the build (image.config reads the names from here). docs/bases.md: Adding a base.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Protocol, runtime_checkable

from image.errors import UserError

# base name -> the module implementing it (a dotted name imported on first use, or the module itself)
REGISTRY: dict[str, str | ModuleType] = {
    "fedora": "image.bases.fedora",
    "debian": "image.bases.debian",
}


@dataclass
class BaseResult:
    raw: Path                    # the bootable raw disk image the base wrote
    release: str                 # e.g. "Debian 12.11 (bookworm)", for the manifest
    packages: list[str] = field(default_factory=list)   # "name version" of every installed package


@runtime_checkable
class Base(Protocol):
    """What every base module provides (tests/unit/test_bases.py checks each registered one)."""
    REQUIRED_TOOLS: dict[str, tuple[str, str]]   # {command: (apt package, dnf package)}, checked before any work
    NEEDS_ROOT: bool                             # loop devices, mounts, chroots
    PROVISION_BASE: str                          # the `ca-appliance provision --base` value (a DISTROS row)
    PACKAGE_KIND: str                            # step-ca's package format: a key of artifacts.PACKAGE_FORMATS
    UPDATE_UNITS: tuple[str, ...]                # updates.security: the timers provision enables
    UPDATE_SERVICE: str                          # the unit installing them (the restart drop-in goes beside it)
    UPDATE_FILES: dict[str, str]                 # updates.security: {path in the guest: text} the build lays in
    OVA_GUEST_OS: tuple[int, str, str]           # the OVF's CIM OperatingSystem id, vSphere osType, description

    def check_host(self) -> None:
        """What REQUIRED_TOOLS cannot express; called before any work (UserError naming the fix)."""

    def build_raw(self, cfg, *, workdir: Path, runner, artifacts: list, payload: Path,
                  use_cache: bool = True) -> BaseResult:
        """Install the base, lay the payload, provision, and write workdir's bootable raw disk;
        use_cache=False rebuilds whatever the base caches between builds (`invoke build --no-cache`)."""


def base_names() -> tuple[str, ...]:
    """The bases a config may name (image.base), in the registry's order."""
    return tuple(REGISTRY)


def register(name: str, module: str | ModuleType) -> None:
    """Add a base: its name and its module (or the module's dotted name)."""
    REGISTRY[name] = module


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def get_base(name: str) -> Base:
    """The module implementing base `name`; UserError for a name the registry does not know, TypeError
    for a module that lacks part of the Base protocol."""
    if name not in REGISTRY:
        raise UserError(f"base: {name!r} is not one of: {', '.join(REGISTRY)}")
    module = REGISTRY[name]
    if isinstance(module, str):
        module = importlib.import_module(module)
    missing = [member for member in _PROTOCOL_MEMBERS if not hasattr(module, member)]
    if missing:
        raise TypeError(f"base {name!r} ({getattr(module, '__name__', module)}) lacks {', '.join(missing)} "
                        "of the Base protocol (image/bases/__init__.py)")
    return module


_PROTOCOL_MEMBERS = tuple(sorted(set(Base.__annotations__) | {"check_host", "build_raw"}))
