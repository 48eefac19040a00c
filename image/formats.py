"""The output formats of a build, one row each: the one table `invoke build` writes from, config
validation (image.formats) and `--format` check against, `invoke build --help` lists and
docs/bases.md ("Bases, formats and outputs") shows (tests/unit/test_formats.py keeps them in step).

A row's converter is named "module:function" and imported when a build writes that format (as the
bases' registry does), so this table imports nothing of the build: image.config reads it, and the
converters (image.build, image.ova) read image.config. A converter is called as
converter(cfg, raw, out, runner, signing, test_reason) and writes `out` from the raw disk image.

Adding a format: one row here, its converter function, a docs/bases.md table row.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from image.errors import UserError


@dataclass(frozen=True)
class OutputFormat:
    name: str                  # what --format and image.formats say
    extension: str             # the dist/ file's extension: <name>-<version>-<base>.<extension>
    converter: str             # "module:function" writing it from the raw disk (see above)
    manifest: str              # what the manifest says the file is (output_formats)
    importers: tuple[str, ...]  # what takes it (docs/importing.md)
    moves_raw: bool = False    # the converter moves the raw disk instead of reading it: written last


FORMATS_TABLE: tuple[OutputFormat, ...] = (
    OutputFormat("qcow2", "qcow2", "image.build:write_qcow2", "QCOW2 disk image, zstd-compressed",
                 ("libvirt/KVM", "Proxmox VE", "OpenStack")),
    OutputFormat("raw", "raw", "image.build:move_raw_format", "raw disk image (sparse)",
                 ("QEMU", "dd to a disk"), moves_raw=True),
    OutputFormat("vmdk", "vmdk", "image.build:write_vmdk_format", "streamOptimized VMDK disk (for a VM you make)",
                 ("vSphere", "VirtualBox")),
    OutputFormat("vhdx", "vhdx", "image.build:write_vhdx", "dynamic VHDX disk, 1 MiB blocks",
                 ("Hyper-V",)),
    OutputFormat("ova", "ova", "image.build:write_ova_format", "OVF 1.0 appliance (OVF, manifest, VMDK)",
                 ("vSphere/ESXi", "VirtualBox", "virt-v2v")),
)
FORMATS: dict[str, OutputFormat] = {row.name: row for row in FORMATS_TABLE}


def format_names() -> tuple[str, ...]:
    return tuple(FORMATS)


def output_format(name: str) -> OutputFormat:
    """The row of format `name`; UserError naming the formats there are."""
    try:
        return FORMATS[name]
    except (KeyError, TypeError):
        raise UserError(f"--format: {name!r} is not one of: {', '.join(FORMATS)}") from None


def converter(name: str) -> Callable:
    module, _, function = output_format(name).converter.partition(":")
    return getattr(importlib.import_module(module), function)


def help_text() -> str:
    """--format's help: each format with what takes it."""
    parts = [f"{row.name} ({', '.join(row.importers)})" for row in FORMATS_TABLE]
    return ", ".join(parts[:-1]) + " or " + parts[-1]
