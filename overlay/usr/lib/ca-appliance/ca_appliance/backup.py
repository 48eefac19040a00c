"""Backup and restore of the whole CA: config, certificates, secrets, password, database, state.

step-ca's badger database cannot be copied while step-ca holds it, so the service is stopped
for the copy and started again afterwards. An archive is a gzip'd tar of paths relative to the
prefix plus a small manifest; it holds the (encrypted) keys and the password, hence mode 0600.
"""
import datetime
import io
import json
import os
import tarfile
from pathlib import Path, PurePosixPath

from . import clientpage, pki, system
from .errors import StepFailed, UserError
from .staging import Staging, write_file

MANIFEST = "ca-appliance-backup.json"
FORMAT = 1


def _tree_roots(layout):
    """What a backup holds: (absolute path, is a directory tree)."""
    return [(layout.steppath, True), (layout.data_dir, True), (layout.state_file, False)]


def write_archive(layout, out_path):
    """Archive the CA as it is on disk (the caller makes sure step-ca is not running)."""
    out_path = Path(out_path)
    if not layout.is_configured():
        raise UserError(f"backup: no CA is configured under {layout.prefix} (no {layout.ca_json}); nothing to back up")
    manifest = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "prefix": str(layout.prefix),
        "root_fingerprint": pki.fingerprint(pki.load_certificate(layout.root_cert)),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(f".{out_path.name}.partial")
    write_file(partial, b"", 0o600)
    try:
        with tarfile.open(partial, "w:gz") as archive:
            data = json.dumps(manifest, indent=2).encode("utf-8")
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode = len(data), 0o600
            archive.addfile(info, io.BytesIO(data))
            for path, _is_tree in _tree_roots(layout):
                if path.exists():
                    archive.add(path, arcname=str(path.relative_to(layout.prefix)), recursive=True)
        os.chmod(partial, 0o600)
        os.replace(partial, out_path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return out_path


def backup(layout, out_path, use_system=True):
    """Stop step-ca, archive, start it again (also when archiving fails)."""
    if use_system and layout.is_system:
        was_running = system.stop_service()
        try:
            return write_archive(layout, out_path)
        finally:
            if was_running:
                system.start_service()
    return write_archive(layout, out_path)


def _allowed(name, layout):
    """Only paths a backup writes: under etc/step-ca, var/lib/step-ca, or the state file."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        return False
    roots = [PurePosixPath(str(p.relative_to(layout.prefix))) for p, _ in _tree_roots(layout)]
    return any(path == root or root in path.parents for root in roots) or name == MANIFEST


def _rebase(value, old, new):
    """Rewrite absolute paths in ca.json/defaults.json from the backup's prefix to this one."""
    if isinstance(value, dict):
        return {key: _rebase(item, old, new) for key, item in value.items()}
    if isinstance(value, list):
        return [_rebase(item, old, new) for item in value]
    if isinstance(value, str) and value.startswith(old.rstrip("/") + "/"):
        return str(Path(new) / value[len(old.rstrip("/")) + 1:])
    return value


def read_archive(archive_path, layout):
    """(manifest, [(relative name, TarInfo, bytes or None)]) after checking every member is one of ours."""
    try:
        archive = tarfile.open(archive_path, "r:gz")
    except (OSError, tarfile.TarError) as error:
        raise UserError(f"restore: {archive_path}: not a ca-appliance backup ({error})") from None
    entries, manifest = [], None
    with archive:
        for member in archive.getmembers():
            if not (member.isfile() or member.isdir()) or not _allowed(member.name, layout):
                raise UserError(f"restore: {archive_path}: unexpected member {member.name!r}; "
                                "only files under etc/step-ca, var/lib/step-ca and the state file are restored")
            data = archive.extractfile(member).read() if member.isfile() else None
            if member.name == MANIFEST:
                manifest = json.loads(data)
            else:
                entries.append((member.name, member, data))
    names = {name for name, _, _ in entries}
    if manifest is None or str(layout.ca_json.relative_to(layout.prefix)) not in names:
        raise UserError(f"restore: {archive_path}: not a ca-appliance backup (no manifest or no ca.json)")
    return manifest, entries


def restore(layout, archive_path, use_system=True, out=None):
    """Replace the CA on disk with the archive's, all or nothing; returns the restored root fingerprint."""
    manifest, entries = read_archive(archive_path, layout)
    step_user = system.ensure_step_user() if use_system else None
    run_service = use_system and layout.is_system
    was_running = system.stop_service() if run_service else False
    staging = Staging()
    try:
        staged = {path: staging.stage_dir(path) for path, is_tree in _tree_roots(layout) if is_tree}
        state_data = None
        for name, member, data in entries:
            absolute = layout.prefix / name
            if absolute == layout.state_file:
                state_data = data
                continue
            root = next(path for path in staged if absolute == path or path in absolute.parents)
            target = staged[root] / absolute.relative_to(root)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                os.chmod(target, member.mode & 0o7777)
                continue
            if name.endswith(("config/ca.json", "config/defaults.json")):
                data = (json.dumps(_rebase(json.loads(data), manifest["prefix"], str(layout.prefix)), indent=2)
                        + "\n").encode("utf-8")
            write_file(target, data, member.mode & 0o7777)
        if step_user is not None:
            for tree in staged.values():
                system.chown_tree(tree, step_user)
        staging.swap()
        if state_data is not None:
            staging.replace_file(layout.state_file, state_data, 0o644)
        staging.commit()
    except BaseException as error:
        staging.rollback()
        if was_running:
            system.start_service()
        if isinstance(error, OSError):
            raise StepFailed("restore", f"{error}; the previous state was left as it was") from None
        raise
    clientpage.publish(layout)
    if run_service:
        system.restore_selinux_labels(layout.steppath, layout.data_dir, layout.state_dir)
        system.start_service(restart=True)
    return manifest["root_fingerprint"]
