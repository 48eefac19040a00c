"""Backup and restore of the whole CA: config, certificates, secrets, password, database, state.

step-ca's badger database cannot be copied while step-ca holds it, so the service is stopped
for the copy and started again afterwards. An archive is a gzip'd tar of paths relative to the
prefix plus a small manifest; it holds the (encrypted) keys and the password, hence mode 0600.

Format 2 (`ca-appliance backup`): that gzip'd tar sealed with AES-256-GCM under a key derived
from the operator's backup passphrase with scrypt (N=2^17, r=8, p=1): MAGIC, one JSON header
line (KDF parameters, salt, nonce; authenticated as associated data), then the ciphertext. The
password.txt inside is therefore only as exposed as the passphrase. Format 1 (a plain .tar.gz,
as earlier versions wrote and setup --force still writes into /var/backups on the appliance
itself, beside the live secrets) is still restored; it proves nothing about who wrote it, so a
passphrase given for one is an error unless the operator adds --allow-unencrypted.

Restore never trusts the archive's metadata: the archive is read once, streamed, with limits
(archive.py); every path gets the owner and mode of the one table (layout.OWNERSHIP); only regular
files and directories under the CA's own paths are taken; and the root fingerprint and the X5C
filter are computed from the bytes installed.
"""
import base64
import datetime
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path, PurePosixPath

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509 import load_pem_x509_certificate

from . import archive, clientpage, database, pki, replace, system
from .archive import MAGIC, SCRYPT
from .errors import StepFailed, UserError
from .layout import OWNERSHIP
from .staging import write_file

MANIFEST = "ca-appliance-backup.json"
FORMAT = 1
ENCRYPTED_FORMAT = archive.ENCRYPTED_FORMAT
MIN_PASSPHRASE = 12
MAX_CONFIG_BYTES = 4 * 2 ** 20   # ca.json, defaults.json, the root certificate: read whole, so bounded


def seal(data, passphrase):
    """Format 2 bytes of `data` (a .tar.gz) under `passphrase`."""
    salt, nonce = os.urandom(16), os.urandom(12)
    header = {"format": ENCRYPTED_FORMAT, "kdf": "scrypt", **SCRYPT, "cipher": "AES-256-GCM",
              "salt": base64.b64encode(salt).decode("ascii"), "nonce": base64.b64encode(nonce).decode("ascii")}
    head = MAGIC + json.dumps(header, sort_keys=True).encode("ascii") + b"\n"
    return head + AESGCM(archive.derive(passphrase, salt, **SCRYPT)).encrypt(nonce, data, head)


def unseal(blob, passphrase, archive_path):
    """The .tar.gz inside a format 2 archive held in memory (tests; restore streams with archive.unpack)."""
    def fail(why):
        raise UserError(f"restore: {archive_path}: {why}")
    end = blob.find(b"\n", len(MAGIC))
    if not blob.startswith(MAGIC) or end < 0:
        fail("damaged backup header")
    n, r, p, salt, nonce = archive.parse_header(blob[len(MAGIC):end], fail)
    try:
        return AESGCM(archive.derive(passphrase, salt, n, r, p)).decrypt(nonce, blob[end + 1:], blob[:end + 1])
    except InvalidTag:
        fail("the passphrase does not open this backup (or the file was altered)")


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
            digests = {}
            for path, _is_tree in _tree_roots(layout):
                if path.exists():
                    _add_hashed(archive, path, str(path.relative_to(layout.prefix)), digests)
            # Last, so it can list the SHA-256 of every member as written (`backup --verify` checks them);
            # restore reads it by name wherever it is.
            manifest["digests"] = digests
            data = json.dumps(manifest, indent=2).encode("utf-8")
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode = len(data), 0o600
            archive.addfile(info, io.BytesIO(data))
        data = buffer.getvalue() if passphrase is None else seal(buffer.getvalue(), passphrase)
        write_file(partial, data, 0o600)
        os.replace(partial, out_path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return out_path


class _Hashing:
    """A file read into the archive, hashed on the way (the digest is of the very bytes archived)."""

    def __init__(self, handle):
        self.handle, self.sha256 = handle, hashlib.sha256()

    def read(self, size=-1):
        data = self.handle.read(size)
        self.sha256.update(data)
        return data


def _add_hashed(archive, path, arcname, digests):
    """tarfile.add(path, arcname) (directories recursively, sorted; links as links), recording each
    regular file's SHA-256 in digests[arcname]."""
    info = archive.gettarinfo(str(path), arcname)
    if info is None:   # a socket or the like: tarfile.add skips it too
        return
    if info.isreg():
        with open(path, "rb") as handle:
            hashing = _Hashing(handle)
            archive.addfile(info, hashing)
        digests[arcname] = hashing.sha256.hexdigest()
        return
    archive.addfile(info)
    if info.isdir():
        for name in sorted(os.listdir(path)):
            _add_hashed(archive, Path(path) / name, f"{arcname}/{name}", digests)


def database_entry(layout):
    """What the manifest says of the database: a shared one's state stays on its server (never the DSN)."""
    db = database.from_ca_json(json.loads(layout.ca_json.read_text()))
    entry = {key: value for key, value in db.items() if key != "dsn"}
    entry["included"] = not database.is_shared(db)
    return entry


def archive_size_bound(layout):
    """At most how many bytes the archive of this CA takes: its files as they are (gzip and the seal
    add less than the tar headers and the allowance counted here)."""
    total = 2 ** 20
    for path, _is_tree in _tree_roots(layout):
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
        total += sum(p.stat().st_size + 1024 for p in files)
    return total


def check_space(layout, out_path):
    """Refuse, before step-ca is touched, a backup the disk has no room for: written anyway, it would
    fail half-way and leave no room for step-ca's database to start again (it runs unprivileged)."""
    needed = archive_size_bound(layout) + archive.DISK_RESERVE
    where = archive.existing_parent(Path(out_path).parent)
    free = archive.free_bytes(where)
    if free < needed:
        raise StepFailed("backup", f"{where} has {free // 2 ** 20} MiB free; the "
                                   f"archive needs up to {(needed - archive.DISK_RESERVE) // 2 ** 20 + 1} MiB and "
                                   f"{archive.DISK_RESERVE // 2 ** 20} MiB must stay free for step-ca: free space "
                                   "(or write the archive elsewhere) and run it again; step-ca was not stopped")


def backup(layout, out_path, use_system=True, passphrase=None):
    """Stop step-ca, archive (sealed under `passphrase` when given), start it again (also when archiving
    fails). With a shared database there is no local database to quiesce: step-ca keeps serving. A
    disk without room for the archive is refused first, with step-ca untouched."""
    replace.recover(layout)  # never archive a swap a crash left half done
    if layout.is_configured():
        check_space(layout, out_path)
    if use_system and layout.is_system and database_entry(layout)["included"]:
        was_running = system.stop_service()
        try:
            return write_archive(layout, out_path, passphrase)
        finally:
            if was_running:
                system.start_service()
    return write_archive(layout, out_path, passphrase)


def _rebase(value, old, new):
    """Rewrite absolute paths in ca.json/defaults.json from the backup's prefix to this one."""
    if isinstance(value, dict):
        return {key: _rebase(item, old, new) for key, item in value.items()}
    if isinstance(value, list):
        return [_rebase(item, old, new) for item in value]
    if isinstance(value, str) and value.startswith(old.rstrip("/") + "/"):
        return str(Path(new) / value[len(old.rstrip("/")) + 1:])
    return value


def without_self_trusting_x5c(config, chain):
    """ca.json minus any X5C provisioner that trusts this CA's own root or intermediate (by
    certificate or by key), as backups of earlier versions may have it: with it, any ACME or JWK
    certificate of this CA could obtain any name (see cajson.provisioners). chain: the PEMs of the
    root and intermediate being installed. An X5C whose roots cannot be read is dropped too."""
    from . import x5c
    provisioners = config.get("authority", {}).get("provisioners") or []
    kept = []
    for provisioner in provisioners:
        if provisioner.get("type") == "X5C":
            try:
                roots = base64.b64decode(provisioner.get("roots") or "", validate=True)
            except ValueError:
                continue
            if x5c.own_chain_problem(roots, chain) is not None:
                continue
        kept.append(provisioner)
    if len(kept) != len(provisioners):
        config["authority"]["provisioners"] = kept
    return config


def _relative(layout, path):
    return PurePosixPath(str(path.relative_to(layout.prefix)))


def _read_staged(path, archive_path, name, command):
    """A staged config file's bytes (it was unpacked within the archive's limits; read it bounded too)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError:
        raise UserError(f"{command}: {archive_path}: holds no {name}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UserError(f"{command}: {archive_path}: {name} is larger than {MAX_CONFIG_BYTES // 1024} KiB")
    return data


def _checked_database(config, archive_path, command):
    """The ca.json's shared database, checked as an answer would be (its name goes into SQL)."""
    from .answers import AnswersError, shown
    db = database.from_ca_json(config)
    if not database.is_shared(db):
        return db
    try:
        return database.validate(db, supported=database.TYPES, key="db")
    except AnswersError as error:
        value = f" {shown(error.value)}" if error.key in ("db.database", "db.type") else ""
        raise UserError(f"{command}: {archive_path}: its ca.json {error.key}{value} {error.message}") from None


# The CA's files by name: what an archive holds at these paths must be a file, never a directory (a
# directory there would take the tree's owner: step, for secrets/root_ca_key; found by the fuzzer).
MUST_BE_FILES = frozenset(
    [entry.path for entry in OWNERSHIP if not entry.tree and entry.dir_mode is None]
    + [PurePosixPath("etc/step-ca") / name for name in (
        "certs/root_ca.crt", "certs/intermediate_ca.crt", "certs/root_ca.crl", "config/defaults.json",
        "secrets/intermediate_ca_key", "secrets/ssh_host_ca_key", "secrets/ssh_user_ca_key")])


def restore(layout, archive_path, use_system=True, out=None, passphrase=None, allow_unencrypted=False,
            before_commit=None, command="restore"):
    """Replace the CA on disk with the archive's, all or nothing; returns the restored root's fingerprint,
    computed from the root certificate installed (never the manifest's word).

    The archive is read once, streamed into staged trees beside the live ones (archive.unpack: limits,
    names checked); step-ca keeps serving until it is complete, checked and (format 2) authenticated.
    before_commit(config, manifest): the caller's last checks of the staged ca.json (join: its database)."""
    replace.recover(layout)  # a swap a crash left half done is undone first
    step_user = system.ensure_step_user() if use_system and layout.is_system else None
    run_service = use_system and layout.is_system
    trees = [path for path, is_tree in _tree_roots(layout) if is_tree]
    state_name = str(_relative(layout, layout.state_file))
    with replace.CAReplacement(layout, command, use_system=use_system, step_user=step_user,
                               stop_at_commit=True) as replacing:
        staged = {_relative(layout, path): replacing.stage(path) for path in trees}

        def accept(name, is_dir):
            if name in (MANIFEST, state_name):
                return "it must be a file" if is_dir else None
            relative = PurePosixPath(name)
            if is_dir and relative in MUST_BE_FILES:   # a directory where the CA keeps a file (the root key...)
                return "it must be a file"
            if any(parent in MUST_BE_FILES for parent in relative.parents):
                return "its parent must be a file"
            for root in staged:
                if relative == root:
                    return None if is_dir else "it must be a directory"
                if root in relative.parents:
                    return None
            return "only files under etc/step-ca, var/lib/step-ca and the state file are restored"

        def destination(name):
            relative = PurePosixPath(name)
            for root, tree in staged.items():
                if relative == root or root in relative.parents:
                    return tree / relative.relative_to(root)
            return None

        kept, seen = archive.unpack(archive_path, passphrase=passphrase, allow_unencrypted=allow_unencrypted,
                                    accept=accept, destination=destination, in_memory={MANIFEST, state_name},
                                    command=command, space_on=layout.data_dir.parent)
        try:
            manifest = json.loads(kept[MANIFEST]) if MANIFEST in kept else None
        except ValueError:
            manifest = None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("prefix"), str):
            raise UserError(f"{command}: {archive_path}: not a ca-appliance backup (no readable manifest, {MANIFEST})")
        steppath = staged[_relative(layout, layout.steppath)]
        ca_json_name = str(_relative(layout, layout.ca_json))
        if seen.get(ca_json_name) is not False:
            raise UserError(f"{command}: {archive_path}: not a ca-appliance backup (no {ca_json_name})")
        root_name = str(_relative(layout, layout.root_cert))
        root_data = _read_staged(steppath / "certs/root_ca.crt", archive_path, root_name, command)
        try:
            fingerprint = pki.fingerprint(load_pem_x509_certificate(root_data))
        except ValueError:
            raise UserError(f"{command}: {archive_path}: holds no readable root certificate ({root_name})") from None
        config = None
        for relative in ("config/ca.json", "config/defaults.json"):
            path = steppath / relative
            if not path.exists():
                continue
            data = _read_staged(path, archive_path, f"etc/step-ca/{relative}", command)
            try:
                parsed = _rebase(json.loads(data), manifest["prefix"], str(layout.prefix))
                if not isinstance(parsed, dict):
                    raise ValueError(relative)
            except (ValueError, RecursionError):
                raise UserError(f"{command}: {archive_path}: etc/step-ca/{relative} is not a JSON object; "
                                "nothing was changed") from None
            if relative == "config/ca.json":
                config = parsed
                if config.get("root") != str(layout.root_cert):
                    raise UserError(f"{command}: {archive_path}: its ca.json names another root than the "
                                    f"backup's own ({root_name}); nothing was changed")
                _checked_database(config, archive_path, command)
                intermediate = steppath / "certs/intermediate_ca.crt"
                chain = [root_data] + ([_read_staged(intermediate, archive_path, "the intermediate certificate",
                                                     command)] if intermediate.exists() else [])
                config = without_self_trusting_x5c(config, chain)
                parsed = config
            write_file(path, json.dumps(parsed, indent=2) + "\n", 0o600)
        if before_commit is not None:
            before_commit(config, manifest)
        replacing.commit(kept.get(state_name))
    clientpage.publish(layout)
    if run_service:
        system.restore_selinux_labels(layout.steppath, layout.data_dir, layout.state_dir)
        system.start_service(restart=True)
    return fingerprint
