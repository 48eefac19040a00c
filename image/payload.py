"""What every base lays into the guest: the overlay tree plus two files generated from the config.

- /usr/lib/ca-appliance/defaults.yaml: the wizard's defaults (the config's `ca` section and the
  admin's SSH keys) over the overlay's own defaults.yaml.
- /etc/ca-appliance/answers.yaml (0600): the baked answers file, when firstboot.answers is set.

The payload is one deterministic tarball (sorted, root-owned, fixed mtime) so both bases install
exactly the same bytes, and so the Fedora OEMDRV volume and the Debian rootfs agree.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import yaml

from image.config import PROJECT_ROOT, Config, read_yaml

OVERLAY_DIR = PROJECT_ROOT / "overlay"
GUEST_DEFAULTS = "usr/lib/ca-appliance/defaults.yaml"
BUILD_INFO = "usr/lib/ca-appliance/build.json"   # read by the guest's buildinfo.py
BAKED_ANSWERS = "etc/ca-appliance/answers.yaml"
# The client page's files: left out of the payload when page.enabled is false (nothing enabled, no port).
PAGE_FILES = ("etc/systemd/system/ca-appliance-page.socket", "etc/systemd/system/ca-appliance-page.service",
              "usr/lib/firewalld/services/ca-appliance-page.xml")
# Reproducible archives: the payload's digest changes only when its content does.
FIXED_MTIME = 1_700_000_000


def guest_defaults(cfg: Config) -> dict:
    """The defaults.yaml the guest wizard reads: the overlay's, with the config's choices over it."""
    shipped = OVERLAY_DIR / GUEST_DEFAULTS
    defaults = read_yaml(shipped, "overlay defaults") if shipped.exists() else {}
    defaults["ca"] = {**defaults.get("ca", {}), **cfg.ca.to_dict()}
    admin = dict(defaults.get("admin", {}))
    admin["user"] = cfg.admin.user
    admin["ssh_authorized_keys"] = list(cfg.admin.ssh_authorized_keys)
    defaults["admin"] = admin
    return defaults


def build_info(cfg: Config) -> dict:
    """Facts about the build the guest shows (status, banner): build.json, keys as in buildinfo.DEFAULTS."""
    info = {"name": cfg.image.name, "version": cfg.image.version, "base": cfg.image.base}
    info["client_page"] = cfg.page.enabled   # the guest serves http://<CA host>/ unless false
    return info


def generated_files(cfg: Config) -> dict[str, tuple[bytes, int]]:
    """Files the config adds to the overlay: {path inside the guest: (content, mode)}."""
    files = {GUEST_DEFAULTS: (yaml.safe_dump(guest_defaults(cfg), sort_keys=False).encode(), 0o644),
             BUILD_INFO: (json.dumps(build_info(cfg), indent=2, sort_keys=True).encode() + b"\n", 0o644)}
    if cfg.firstboot.answers:
        files[BAKED_ANSWERS] = (Path(cfg.firstboot.answers).read_bytes(), 0o600)
    return files


def _overlay_mode(st_mode: int) -> int:
    """Only the executable bit of the checkout counts: umask and owner must not leak into the image."""
    return 0o755 if st_mode & 0o111 else 0o644


def write_payload_tarball(cfg: Config, dest: Path) -> Path:
    """Write overlay/ plus the generated files as a gzip tarball whose members are relative to /."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    generated = generated_files(cfg)
    entries: dict[str, tuple[str, bytes | None, int]] = {}
    for root, dirs, files in os.walk(OVERLAY_DIR):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        rel_root = os.path.relpath(root, OVERLAY_DIR)
        for d in dirs:
            entries[os.path.normpath(os.path.join(rel_root, d))] = ("dir", None, 0o755)
        for f in files:
            if f.endswith(".pyc"):
                continue
            rel = os.path.normpath(os.path.join(rel_root, f))
            path = os.path.join(root, f)
            entries[rel] = ("file", Path(path).read_bytes(), _overlay_mode(os.stat(path).st_mode))
    if not cfg.page.enabled:
        for rel in PAGE_FILES:
            entries.pop(rel, None)
    for rel, (content, mode) in generated.items():
        parent = os.path.dirname(rel)
        while parent and parent not in entries:
            entries[parent] = ("dir", None, 0o755)
            parent = os.path.dirname(parent)
        entries[rel] = ("file", content, mode)
    tmp = dest.with_name(dest.name + ".part")
    with open(tmp, "wb") as raw:
        # no name, mtime 0 in the gzip header: identical content gives identical bytes
        with gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for rel in sorted(entries):
                kind, content, mode = entries[rel]
                info = tarfile.TarInfo(rel)
                info.mtime, info.uid, info.gid, info.uname, info.gname = FIXED_MTIME, 0, 0, "root", "root"
                info.mode = mode
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                else:
                    info.size = len(content)
                    tar.addfile(info, io.BytesIO(content))
    os.replace(tmp, dest)
    return dest

