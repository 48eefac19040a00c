"""What every base lays into the guest: the overlay tree plus two files generated from the config.

- /usr/lib/ca-appliance/defaults.yaml: the wizard's defaults (the config's `ca` section and the
  admin's SSH keys) over the overlay's own defaults.yaml.
- /etc/ca-appliance/answers.yaml (0600): the baked answers file, when firstboot.answers is set.
- /etc/ca-appliance/provision.json (0600): what `ca-appliance provision` needs from the config (the
  admin, its keys and password hash, whether the step CLI is in); provision deletes it once applied.
- /usr/lib/ca-appliance/build.json: facts about the build the guest shows (buildinfo.DEFAULTS).

The tarball carries directory members only for the appliance's own directories (a name with
"ca-appliance" or "ca_appliance"): a member for /usr/sbin would make tar replace the distribution's
directory symlinks (Fedora 42+: /usr/sbin -> bin) with a directory. Both bases also extract it with
--keep-directory-symlink.

The payload is one deterministic tarball (sorted, root-owned, fixed mtime) so both bases install
exactly the same bytes, and so the Fedora OEMDRV volume and the Debian rootfs agree.
"""
from __future__ import annotations

import datetime
import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import yaml

from image.bases import get_base
from image.config import PROJECT_ROOT, Config, baked_defaults, guest_rules_check, read_yaml
from image.runner import probe

OVERLAY_DIR = PROJECT_ROOT / "overlay"
GUEST_DEFAULTS = "usr/lib/ca-appliance/defaults.yaml"
BUILD_INFO = "usr/lib/ca-appliance/build.json"   # read by the guest's buildinfo.py
BAKED_ANSWERS = "etc/ca-appliance/answers.yaml"
PROVISION_INPUT = "etc/ca-appliance/provision.json"   # read by the guest's provision.py
# How the payload is extracted into an installed root (the Fedora kickstart's chrooted %post, and
# provision's tests): a directory symlink (/usr/sbin -> bin) stays one.
PAYLOAD_TAR_OPTIONS = ("--numeric-owner", "--no-overwrite-dir", "--keep-directory-symlink")
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


def build_info(cfg: Config, artifacts: list | None = None) -> dict:
    """Facts about the build the guest shows (status, banner): build.json, keys as in buildinfo.DEFAULTS.
    With the build's artifacts: the step-ca version and whether that makes it a test image."""
    from image.stepca_version import assess_step_ca
    info = {"name": cfg.image.name, "version": cfg.image.version, "base": cfg.image.base}
    info.update(assess_step_ca(artifacts or []).as_build_info())
    info["client_page"] = cfg.page.enabled   # the guest serves http://<CA host>/ unless false
    info["built_at"] = source_date().strftime("%Y-%m-%dT%H:%M:%SZ")   # the guest's clock check: earliest
    info["support_days"] = SUPPORT_DAYS
    return info


# How long after built_at an unsynchronised clock is still believed (guest clock.py): ten years, the
# default root's lifetime and longer than either base's security support, so only a wild clock trips it.
SUPPORT_DAYS = 3650


def source_date() -> datetime.datetime:
    """When the payload's sources were last changed: SOURCE_DATE_EPOCH (reproducible builds), else the
    last commit touching overlay/, else its newest file. No later than the build itself, and the same on
    every call, so the payload stays reproducible (the test image's cache key digests it)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not epoch.isdigit():
        proc = probe(["git", "-C", PROJECT_ROOT, "log", "-1", "--format=%ct", "--", "overlay"])
        epoch = proc.stdout.strip() if proc is not None else ""
    if not epoch.isdigit():
        epoch = str(int(max(p.stat().st_mtime for p in OVERLAY_DIR.rglob("*") if p.is_file())))
    return datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)


# updates.security: the OS installs security updates by itself; afterwards step-ca is restarted
# only when it still maps a replaced file (ca-appliance restart-if-stale, guest updates.py).
RESTART_DROPIN = """# Written by the appliance build (updates.security): after the security updates, restart
# step-ca if it still runs a library or binary they replaced.
[Service]
ExecStartPost=-/usr/bin/ca-appliance restart-if-stale
"""


def update_files(cfg: Config) -> dict[str, tuple[bytes, int]]:
    """The OS security-update configuration of the image's base (none with updates.security false)."""
    if not cfg.updates.security:
        return {}
    base = get_base(cfg.image.base)
    texts = {**base.UPDATE_FILES, f"etc/systemd/system/{base.UPDATE_SERVICE}.d/ca-appliance.conf": RESTART_DROPIN}
    return {path: (text.encode(), 0o644) for path, text in texts.items()}



def provision_input(cfg: Config) -> dict:
    """provision.json: the config facts `ca-appliance provision` applies (0600: the password hash)."""
    return {"admin": {"user": cfg.admin.user, "ssh_authorized_keys": list(cfg.admin.ssh_authorized_keys),
                      "password_hash": cfg.admin.password_hash},
            "step_cli": bool(cfg.artifacts.step_cli.enabled),
            # distribution units provision enables besides its own table (when the image has them)
            "extra_units": list(get_base(cfg.image.base).UPDATE_UNITS) if cfg.updates.security else []}


def owns_directory(rel: str) -> bool:
    """The appliance's own directories get a member (and mode); system ones never do."""
    return "ca-appliance" in rel or "ca_appliance" in rel


def generated_files(cfg: Config, artifacts: list | None = None) -> dict[str, tuple[bytes, int]]:
    """Files the config adds to the overlay: {path inside the guest: (content, mode)}."""
    files = {GUEST_DEFAULTS: (yaml.safe_dump(guest_defaults(cfg), sort_keys=False).encode(), 0o644),
             BUILD_INFO: (json.dumps(build_info(cfg, artifacts), indent=2, sort_keys=True).encode() + b"\n", 0o644),
             PROVISION_INPUT: (json.dumps(provision_input(cfg), indent=2, sort_keys=True).encode() + b"\n", 0o600)}
    files.update(update_files(cfg))
    if cfg.firstboot.answers:
        content = Path(cfg.firstboot.answers).read_bytes()
        # The exact bytes baked, checked by the guest's rules: no password, nothing first boot refuses.
        guest_rules_check(baked_defaults(cfg), (cfg.firstboot.answers, content))
        files[BAKED_ANSWERS] = (content, 0o600)
    return files


def _overlay_mode(st_mode: int) -> int:
    """Only the executable bit of the checkout counts: umask and owner must not leak into the image."""
    return 0o755 if st_mode & 0o111 else 0o644


def write_payload_tarball(cfg: Config, dest: Path, artifacts: list | None = None) -> Path:
    """Write overlay/ plus the generated files as a gzip tarball whose members are relative to /."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    generated = generated_files(cfg, artifacts)
    entries: dict[str, tuple[str, bytes | None, int]] = {}
    for root, dirs, files in os.walk(OVERLAY_DIR):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        rel_root = os.path.relpath(root, OVERLAY_DIR)
        for d in dirs:
            rel = os.path.normpath(os.path.join(rel_root, d))
            if owns_directory(rel):
                entries[rel] = ("dir", None, 0o755)
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
            if owns_directory(parent):
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

