"""Restore drills (issue 25): `ca-appliance backup --verify FILE` and the watch's check of the newest
archive in /var/backups/ca-appliance.

A drill reads the archive exactly as restore does (archive.unpack: streamed, limits, names
checked, a sealed archive authenticated) into a private temporary directory that is removed
afterwards, and then checks what a restore would need: every member's SHA-256 against the
manifest's list, the root certificate against the manifest's fingerprint, and that every key
opens with the archived CA password (the key files, and the JWK provisioner's encrypted key in
ca.json) and matches its certificate. It never stops step-ca, and writes nothing outside that
temporary directory.
"""
import dataclasses
import datetime
import hashlib
import json
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap
from cryptography.x509 import load_pem_x509_certificate

from . import archive, jose, pki
from .errors import UserError
from .layout import Layout

MANIFEST = "ca-appliance-backup.json"
COMMAND = "backup --verify"
STALE_DAYS = 30                  # the watch warns when the newest archive is older than this
MAX_JWE_ITERATIONS = 10 * jose.PBKDF2_ITERATIONS   # a provisioner key asking for more is not ours
# Where the watch finds the passphrase of sealed archives (root's, 0600; the operator's choice to keep
# one): without it the watch can only say that the newest archive is sealed.
PASSPHRASE_FILE = "/etc/ca-appliance/backup-passphrase"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".cab", ".backup")


@dataclasses.dataclass
class Drill:
    archive: Path
    problems: list              # one line each; empty: the archive would restore
    summary: str = ""


def _names():
    """The archive names restore takes (relative to any prefix): its trees, and the state file."""
    layout = Layout(None)
    trees = [PurePosixPath(str(path.relative_to(layout.prefix))) for path in (layout.steppath, layout.data_dir)]
    return trees, str(layout.state_file.relative_to(layout.prefix))


def verify(archive_path, passphrase=None, command=COMMAND):
    """Drill `archive_path`: a Drill with one line per problem (none: good) and a summary."""
    archive_path = Path(archive_path)
    trees, state_name = _names()
    work = Path(tempfile.mkdtemp(prefix="ca-appliance-verify-"))   # 0700, ours only
    try:
        def accept(name, is_dir):   # restore's rule: what it would refuse, the drill refuses
            if name in (MANIFEST, state_name):
                return "it must be a file" if is_dir else None
            relative = PurePosixPath(name)
            if any(relative == root or root in relative.parents for root in trees):
                return None
            return "only files under etc/step-ca, var/lib/step-ca and the state file are restored"

        try:
            kept, seen = archive.unpack(archive_path, passphrase=passphrase, allow_unencrypted=True, accept=accept,
                                        destination=lambda name: work / name, in_memory={MANIFEST, state_name},
                                        command=command, space_on=work)
        except UserError as error:
            return Drill(archive_path, [str(error)])
        return _check(archive_path, work, kept, seen, state_name, command,
                      sealed=archive.is_sealed(archive_path))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check(archive_path, work, kept, seen, state_name, command, sealed):
    problems = []

    def problem(text):
        problems.append(f"{command}: {archive_path}: {text}")

    try:
        manifest = json.loads(kept[MANIFEST])
    except (KeyError, ValueError):
        manifest = None
    if not isinstance(manifest, dict):
        return Drill(archive_path, [f"{command}: {archive_path}: not a ca-appliance backup (no readable "
                                    f"manifest, {MANIFEST})"])
    files = sorted(name for name, is_dir in seen.items() if not is_dir and name != MANIFEST)
    digests = manifest.get("digests")
    if digests is not None and not isinstance(digests, dict):
        problem("its manifest's digests are not a mapping of member to SHA-256")
        digests = {}
    if digests is not None:
        for name in files:
            data_path = None if name == state_name else work / name
            actual = hashlib.sha256(kept[name]).hexdigest() if data_path is None else _sha256(data_path)
            if name not in digests:
                problem(f"member {name!r:.80} is not in the manifest (added after the backup was written?)")
            elif digests[name] != actual:
                problem(f"member {name!r:.80} does not match the manifest's SHA-256 (altered or damaged)")
        for name in sorted(set(digests) - set(files)):
            problem(f"member {str(name)!r:.80} the manifest lists is missing")
    steppath = work / "etc/step-ca"
    root, opened = _check_keys(steppath, manifest, problem)
    if problems:
        return Drill(archive_path, problems)
    created = manifest.get("created") if isinstance(manifest.get("created"), str) else "an unknown time"
    digest_text = (f"all {len(files)} members match the manifest's SHA-256" if digests is not None else
                   f"{len(files)} members (an archive from before digests: not checked against a list)")
    return Drill(archive_path, [], (
        f"{archive_path}: good: {'sealed (format 2, authenticated)' if sealed else 'plain (format 1)'}, "
        f"written {created}; {digest_text}; {opened} opened with the archived CA password and match "
        f"their certificates; root {pki.fingerprint(root)}"))


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(archive.CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_keys(steppath, manifest, problem):
    """(root certificate or None, 'N keys and the provisioner key'): every key opens with password.txt."""
    def read(relative, what):
        try:
            return (steppath / relative).read_bytes()
        except OSError:
            problem(f"holds no {what} (etc/step-ca/{relative})")
            return None

    root = None
    root_pem = read("certs/root_ca.crt", "root certificate")
    if root_pem is not None:
        try:
            root = load_pem_x509_certificate(root_pem)
        except ValueError:
            problem("its root certificate (etc/step-ca/certs/root_ca.crt) does not parse")
    if root is not None and manifest.get("root_fingerprint") not in (None, pki.fingerprint(root)):
        problem("its root certificate is not the one the manifest names (root_fingerprint)")
    password_bytes = read("password.txt", "CA password")
    if password_bytes is None:
        return root, "no keys"
    password = password_bytes.decode("utf-8", "replace").strip().encode("utf-8")
    certificates = {"intermediate_ca_key": "certs/intermediate_ca.crt", "root_ca_key": "certs/root_ca.crt"}
    secrets = steppath / "secrets"
    names = sorted(path.name for path in secrets.iterdir() if path.is_file()) if secrets.is_dir() else []
    if "intermediate_ca_key" not in names:
        problem("holds no intermediate key (etc/step-ca/secrets/intermediate_ca_key)")
    count = 0
    for name in names:
        where = f"etc/step-ca/secrets/{name}"
        try:
            key = serialization.load_pem_private_key((secrets / name).read_bytes(), password)
        except TypeError:
            problem(f"key {where} is not encrypted (every key file is, under the CA password)")
            continue
        except ValueError:
            problem(f"key {where} does not open with the archived CA password (etc/step-ca/password.txt)")
            continue
        count += 1
        certificate = certificates.get(name)
        if certificate and (steppath / certificate).exists():
            try:
                cert = load_pem_x509_certificate((steppath / certificate).read_bytes())
            except ValueError:
                problem(f"etc/step-ca/{certificate} does not parse")
                continue
            if _spki(cert.public_key()) != _spki(key.public_key()):
                problem(f"key {where} is not the key of etc/step-ca/{certificate}")
    provisioners = _provisioner_keys(steppath, problem)
    for name, encrypted in provisioners:
        try:
            _decrypt_pbes2(encrypted, password)
        except ValueError as error:
            problem(f"the encrypted key of provisioner {name!r:.60} in ca.json does not open with the archived "
                    f"CA password ({error})")
            continue
        count += 1
    return root, f"{count} key{'s' * (count != 1)} (key files and provisioner keys)"


def _spki(public_key):
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _provisioner_keys(steppath, problem):
    try:
        config = json.loads((steppath / "config/ca.json").read_bytes())
    except OSError:
        problem("holds no etc/step-ca/config/ca.json")
        return []
    except ValueError:
        problem("its etc/step-ca/config/ca.json is not JSON")
        return []
    provisioners = ((config.get("authority") or {}).get("provisioners") or []) if isinstance(config, dict) else []
    return [(str(p.get("name")), p["encryptedKey"]) for p in provisioners
            if isinstance(p, dict) and isinstance(p.get("encryptedKey"), str)]


def _decrypt_pbes2(compact, password):
    """The plaintext of a PBES2-HS256+A128KW / A256GCM compact JWE (jose.encrypt_pbes2's); ValueError why not."""
    parts = compact.split(".")
    if len(parts) != 5:
        raise ValueError("not a compact JWE")
    try:
        header = json.loads(jose.b64url_decode(parts[0]))
        encrypted_key, iv, ciphertext, tag = (jose.b64url_decode(part) for part in parts[1:])
        iterations, salt = header["p2c"], jose.b64url_decode(header["p2s"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"damaged JWE: {type(error).__name__}") from None
    if header.get("alg") != jose.PBES2_ALG or header.get("enc") != jose.CONTENT_ENC:
        raise ValueError(f"not {jose.PBES2_ALG} with {jose.CONTENT_ENC}")
    if type(iterations) is not int or not 1000 <= iterations <= MAX_JWE_ITERATIONS:
        raise ValueError(f"PBKDF2 iterations out of range (1000 to {MAX_JWE_ITERATIONS})")
    try:
        cek = aes_key_unwrap(jose._pbes2_key(password, salt, iterations), encrypted_key)
        return AESGCM(cek).decrypt(iv, ciphertext + tag, parts[0].encode("ascii"))
    except (InvalidUnwrap, InvalidTag, ValueError):
        raise ValueError("wrong password or altered key") from None


# ---- the watch's drill ----

def newest_archive(layout):
    """The most recently written archive in /var/backups/ca-appliance (None: there is none)."""
    directory = layout.backup_dir
    try:
        candidates = [path for path in directory.iterdir()
                      if path.is_file() and not path.name.startswith(".") and path.name.endswith(ARCHIVE_SUFFIXES)]
    except OSError:
        return None
    return max(candidates, key=lambda path: path.stat().st_mtime, default=None)


def watch_drill(layout, now=None):
    """(findings as (level name, message), info line or None) for the watch. Nothing when no archive
    is in /var/backups/ca-appliance: backups are the operator's choice; once one is there the drill
    runs on the newest, which must also be younger than STALE_DAYS."""
    newest = newest_archive(layout)
    if newest is None:
        return [], None
    now = now or datetime.datetime.now(datetime.UTC)
    age = now - datetime.datetime.fromtimestamp(newest.stat().st_mtime, datetime.UTC)
    findings = []
    if age > datetime.timedelta(days=STALE_DAYS):
        findings.append(("warning", f"the newest backup in {layout.backup_dir} is {age.days} days old ({newest.name}): "
                                    f"write a new one (`sudo ca-appliance backup --out {layout.backup_dir}/...`)"))
    passphrase = None
    if archive.is_sealed(newest):
        try:
            passphrase = layout.path(PASSPHRASE_FILE).read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError, UnicodeDecodeError):
            return findings, (f"restore drill: {newest} is sealed and {layout.path(PASSPHRASE_FILE)} (its passphrase, "
                              "root's, 0600) is not there: not opened")
    drill = verify(newest, passphrase)
    if drill.problems:
        findings.append(("warning", f"the newest backup fails its restore drill: {drill.problems[0]}"
                                    + (f" (and {len(drill.problems) - 1} more: `sudo ca-appliance backup --verify "
                                       f"{newest}`)" if len(drill.problems) > 1 else "")))
        return findings, None
    return findings, f"restore drill: {drill.summary}"

