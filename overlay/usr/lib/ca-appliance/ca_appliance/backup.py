"""Backup and restore of the whole CA: config, certificates, secrets, password, database, state.

step-ca's badger database cannot be copied while step-ca holds it, so the service is stopped
for the copy and started again afterwards. An archive is a gzip'd tar of paths relative to the
prefix plus a small manifest; it holds the (encrypted) keys and the password, hence mode 0600.

Format 2 (`ca-appliance backup`): that gzip'd tar sealed with AES-256-GCM under a key derived
from the operator's backup passphrase with scrypt (N=2^17, r=8, p=1): MAGIC, one JSON header
line (KDF parameters, salt, nonce; authenticated as associated data), then the ciphertext. The
password.txt inside is therefore only as exposed as the passphrase. Format 1 (a plain .tar.gz,
as earlier versions wrote and setup --force still writes into /var/backups on the appliance
itself, beside the live secrets) is still restored.

Restore never trusts the archive's metadata: every member's mode is the appliance's own for its
path (no setuid, no group or world access to secrets), only regular files and directories under
the CA's own paths are taken, and the root fingerprint is computed from the restored root.
"""
import base64
import datetime
import io
import json
import os
import tarfile
from pathlib import Path, PurePosixPath

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.x509 import load_pem_x509_certificate

from . import clientpage, database, pki, replace, system
from .errors import UserError
from .staging import write_file

MANIFEST = "ca-appliance-backup.json"
FORMAT = 1
ENCRYPTED_FORMAT = 2
MAGIC = b"CA-APPLIANCE-BACKUP\n"
SCRYPT = {"n": 2 ** 17, "r": 8, "p": 1}
MAX_SCRYPT_N = 2 ** 20  # a hostile header must not ask for gigabytes
MIN_PASSPHRASE = 12


def _derive(passphrase, salt, n, r, p):
    if isinstance(passphrase, str):
        passphrase = passphrase.encode("utf-8")
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


def seal(data, passphrase):
    """Format 2 bytes of `data` (a .tar.gz) under `passphrase`."""
    salt, nonce = os.urandom(16), os.urandom(12)
    header = {"format": ENCRYPTED_FORMAT, "kdf": "scrypt", **SCRYPT, "cipher": "AES-256-GCM",
              "salt": base64.b64encode(salt).decode("ascii"), "nonce": base64.b64encode(nonce).decode("ascii")}
    head = MAGIC + json.dumps(header, sort_keys=True).encode("ascii") + b"\n"
    return head + AESGCM(_derive(passphrase, salt, **SCRYPT)).encrypt(nonce, data, head)


def unseal(blob, passphrase, archive_path):
    """The .tar.gz inside a format 2 archive; UserError for a wrong passphrase or a damaged file."""
    end = blob.find(b"\n", len(MAGIC))
    try:
        header = json.loads(blob[len(MAGIC):end])
        n, r, p = int(header["n"]), int(header["r"]), int(header["p"])
        salt, nonce = base64.b64decode(header["salt"]), base64.b64decode(header["nonce"])
        if header.get("kdf") != "scrypt" or header.get("cipher") != "AES-256-GCM" or not (
                2 <= n <= MAX_SCRYPT_N and 1 <= r <= 32 and 1 <= p <= 16):
            raise ValueError("unsupported parameters")
    except (ValueError, KeyError, TypeError):
        raise UserError(f"restore: {archive_path}: damaged backup header") from None
    if not passphrase:
        raise UserError(f"restore: {archive_path}: is an encrypted backup; give its passphrase "
                        "(--passphrase-file FILE, or run on a terminal to be asked)")
    try:
        return AESGCM(_derive(passphrase, salt, n, r, p)).decrypt(nonce, blob[end + 1:], blob[:end + 1])
    except InvalidTag:
        raise UserError(f"restore: {archive_path}: the passphrase does not open this backup "
                        "(or the file was altered)") from None


def _tree_roots(layout):
    """What a backup holds: (absolute path, is a directory tree)."""
    return [(layout.steppath, True), (layout.data_dir, True), (layout.state_file, False)]


def write_archive(layout, out_path, passphrase=None):
    """Archive the CA as it is on disk (the caller makes sure step-ca is not running); sealed
    (format 2) when a passphrase is given."""
    out_path = Path(out_path)
    if not layout.is_configured():
        raise UserError(f"backup: no CA is configured under {layout.prefix} (no {layout.ca_json}); nothing to back up")
    manifest = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "prefix": str(layout.prefix),
        "root_fingerprint": pki.fingerprint(pki.load_certificate(layout.root_cert)),
        "database": database_entry(layout),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(f".{out_path.name}.partial")
    write_file(partial, b"", 0o600)
    try:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            data = json.dumps(manifest, indent=2).encode("utf-8")
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode = len(data), 0o600
            archive.addfile(info, io.BytesIO(data))
            for path, _is_tree in _tree_roots(layout):
                if path.exists():
                    archive.add(path, arcname=str(path.relative_to(layout.prefix)), recursive=True)
        data = buffer.getvalue() if passphrase is None else seal(buffer.getvalue(), passphrase)
        write_file(partial, data, 0o600)
        os.replace(partial, out_path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return out_path


def database_entry(layout):
    """What the manifest says of the database: a shared one's state stays on its server (never the DSN)."""
    db = database.from_ca_json(json.loads(layout.ca_json.read_text()))
    entry = {key: value for key, value in db.items() if key != "dsn"}
    entry["included"] = not database.is_shared(db)
    return entry


def backup(layout, out_path, use_system=True, passphrase=None):
    """Stop step-ca, archive (sealed under `passphrase` when given), start it again (also when archiving
    fails). With a shared database there is no local database to quiesce: step-ca keeps serving."""
    replace.recover(layout)  # never archive a swap a crash left half done
    if use_system and layout.is_system and database_entry(layout)["included"]:
        was_running = system.stop_service()
        try:
            return write_archive(layout, out_path, passphrase)
        finally:
            if was_running:
                system.start_service()
    return write_archive(layout, out_path, passphrase)


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


def read_archive(archive_path, layout, passphrase=None):
    """(manifest, [(relative name, TarInfo, bytes or None)]) after checking every member is one of ours."""
    try:
        blob = Path(archive_path).read_bytes()
    except OSError as error:
        raise UserError(f"restore: {archive_path}: cannot be read ({error.strerror})") from None
    if blob.startswith(MAGIC):
        blob = unseal(blob, passphrase, archive_path)
    try:
        archive = tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz")
    except (OSError, tarfile.TarError, EOFError) as error:
        raise UserError(f"restore: {archive_path}: not a ca-appliance backup ({error})") from None
    entries, manifest = [], None
    with archive:
        for member in archive.getmembers():
            if not (member.isfile() or member.isdir()) or not _allowed(member.name, layout):
                raise UserError(f"restore: {archive_path}: unexpected member {member.name!r}; "
                                "only files under etc/step-ca, var/lib/step-ca and the state file are restored")
            data = archive.extractfile(member).read() if member.isfile() else None
            if member.name == MANIFEST:
                try:
                    manifest = json.loads(data)
                except ValueError:
                    manifest = None
                if not isinstance(manifest, dict) or not isinstance(manifest.get("prefix"), str):
                    raise UserError(f"restore: {archive_path}: damaged manifest ({MANIFEST})")
            else:
                entries.append((member.name, member, data))
    names = {name for name, _, _ in entries}
    if manifest is None or str(layout.ca_json.relative_to(layout.prefix)) not in names:
        raise UserError(f"restore: {archive_path}: not a ca-appliance backup (no manifest or no ca.json)")
    return manifest, entries


def without_self_trusting_x5c(config, root_pem):
    """ca.json minus any X5C provisioner that trusts the CA's own root, as backups of earlier versions
    have it: with it, any ACME client could get a certificate for any name (see cajson.provisioners)."""
    own = "".join(root_pem.decode("ascii", "replace").split())
    provisioners = config.get("authority", {}).get("provisioners") or []
    kept = []
    for provisioner in provisioners:
        if provisioner.get("type") == "X5C":
            try:
                roots = base64.b64decode(provisioner.get("roots") or "").decode("ascii", "replace")
            except ValueError:
                roots = ""
            if own and own in "".join(roots.split()):
                continue
        kept.append(provisioner)
    if len(kept) != len(provisioners):
        config["authority"]["provisioners"] = kept
    return config


def restored_mode(layout, name, is_dir):
    """The mode a restored path gets, from its path alone: the archive's modes are never trusted."""
    relative = PurePosixPath(name)
    steppath = PurePosixPath(str(layout.steppath.relative_to(layout.prefix)))
    data_dir = PurePosixPath(str(layout.data_dir.relative_to(layout.prefix)))
    secrets = steppath / "secrets"
    if relative == steppath / "password.txt":
        return 0o400
    if relative == secrets or secrets in relative.parents:
        return 0o700 if is_dir else 0o600
    if relative == data_dir:
        return 0o750
    if data_dir in relative.parents:
        return 0o700 if is_dir else 0o600
    return 0o755 if is_dir else 0o644


def restore(layout, archive_path, use_system=True, out=None, passphrase=None):
    """Replace the CA on disk with the archive's, all or nothing; returns the restored root's
    fingerprint, computed from the restored certificate (not the manifest's word)."""
    manifest, entries = read_archive(archive_path, layout, passphrase)
    root_name = str(layout.root_cert.relative_to(layout.prefix))
    root_data = next((data for name, _member, data in entries if name == root_name), None)
    try:
        fingerprint = pki.fingerprint(load_pem_x509_certificate(root_data or b""))
    except ValueError:
        raise UserError(f"restore: {archive_path}: holds no readable root certificate ({root_name})") from None
    step_user = system.ensure_step_user() if use_system else None
    run_service = use_system and layout.is_system
    with replace.CAReplacement(layout, "restore", use_system=use_system, step_user=step_user) as replacing:
        staged = {path: replacing.stage(path) for path, is_tree in _tree_roots(layout) if is_tree}
        state_data = None
        for name, member, data in entries:
            absolute = layout.prefix / name
            if absolute == layout.state_file:
                state_data = data
                continue
            root = next(path for path in staged if absolute == path or path in absolute.parents)
            target = staged[root] / absolute.relative_to(root)
            mode = restored_mode(layout, name, member.isdir())
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                os.chmod(target, mode)
                continue
            if name.endswith(("config/ca.json", "config/defaults.json")):
                try:
                    config = _rebase(json.loads(data), manifest["prefix"], str(layout.prefix))
                except (ValueError, AttributeError):
                    raise UserError(f"restore: {archive_path}: {name} is not valid JSON; nothing was changed") from None
                if name.endswith("config/ca.json"):
                    config = without_self_trusting_x5c(config, root_data)
                    if database.is_shared(database.from_ca_json(config)):
                        mode = 0o400   # it holds the shared database's DSN, password included
                data = (json.dumps(config, indent=2) + "\n").encode("utf-8")
            write_file(target, data, mode)
        for root, tree in staged.items():
            os.chmod(tree, restored_mode(layout, str(root.relative_to(layout.prefix)), True))
        replacing.commit(state_data)
    clientpage.publish(layout)
    if run_service:
        system.restore_selinux_labels(layout.steppath, layout.data_dir, layout.state_dir)
        system.start_service(restart=True)
    return fingerprint
