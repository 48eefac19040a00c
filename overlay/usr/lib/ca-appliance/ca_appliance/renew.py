"""`ca-appliance renew-intermediate`: a new intermediate key and certificate from the same root.

The root stays as it is, so every client that trusts it keeps trusting the CA, and certificates
issued before still verify (they carry the old intermediate in their chain, signed by the same
root). The new pair is written into a staged copy of STEPPATH and swapped in all or nothing
(staging.py); the old pair is kept beside it (`*.previous`) for a manual roll back. step-ca
then reloads (SIGHUP through `systemctl reload`) and serves the new intermediate.
"""
import datetime
import json
import os
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from . import cajson, clientpage, pki, replace, system
from .errors import StepFailed, UserError
from .layout import SERVICE
from .staging import Staging, write_file

INTERMEDIATE_KEY = "intermediate_ca_key"
ROOT_KEY = "root_ca_key"


def key_type_of(public_key):
    """The setup key type (pki.KEY_TYPES) that makes a key like this one."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return {256: "EC-P256", 384: "EC-P384"}.get(public_key.curve.key_size, "EC-P256")
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RSA-4096" if public_key.key_size >= 4096 else "RSA-3072"
    raise UserError(f"renew-intermediate: the current intermediate has a {type(public_key).__name__}; "
                    f"only {', '.join(pki.KEY_TYPES)} are supported")


def _same_public_key(a, b):
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(serialization.Encoding.DER, spki) == b.public_bytes(serialization.Encoding.DER, spki)


def load_root_key(path, passphrase, root_cert, what):
    """The root's private key from an encrypted PEM; UserError naming `what` when it does not open or match."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"renew-intermediate: {what} {path}: cannot be read ({error.strerror})") from None
    try:
        key = serialization.load_pem_private_key(data, password=passphrase.encode("utf-8") if passphrase else None)
    except (ValueError, TypeError):
        raise UserError(f"renew-intermediate: {what} {path}: cannot be opened with the passphrase given "
                        "(wrong passphrase, or not a PEM private key)") from None
    if not _same_public_key(key.public_key(), root_cert.public_key()):
        raise UserError(f"renew-intermediate: {what} {path}: is not the key of this CA's root "
                        f"(fingerprint {pki.fingerprint(root_cert)})")
    return key


def new_intermediate(root_cert, root_key, previous, now=None):
    """(certificate, key): same subject, key type, lifetime and name constraints as `previous`,
    never outliving the root."""
    now = now or datetime.datetime.now(datetime.UTC)
    key = pki.generate_key(key_type_of(previous.public_key()))
    lifetime = pki.not_after(previous) - _not_before(previous)
    not_after = min(now + lifetime, pki.not_after(root_cert))
    if not_after <= now + datetime.timedelta(days=1):
        raise UserError(f"renew-intermediate: the root expires {pki.not_after(root_cert):%Y-%m-%d}: "
                        "an intermediate cannot outlive it; make a new CA (ca-appliance setup --force)")
    builder = (
        x509.CertificateBuilder()
        .subject_name(previous.subject)
        .issuer_name(root_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - pki.BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            root_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value), critical=False)
    )
    for extension in previous.extensions:  # basic constraints, key usage, name constraints, the root's CRL
        if isinstance(extension.value, (x509.BasicConstraints, x509.KeyUsage, x509.NameConstraints,
                                        x509.CRLDistributionPoints)):
            builder = builder.add_extension(extension.value, critical=extension.critical)
    return builder.sign(root_key, pki._signature_hash(root_key)), key


def _not_before(cert):
    value = getattr(cert, "not_valid_before_utc", None)
    return value if value is not None else cert.not_valid_before.replace(tzinfo=datetime.UTC)


def renew_intermediate(layout, *, root_key_file=None, root_key_passphrase=None, use_system=True, now=None):
    """Replace the intermediate, all or nothing; returns the new certificate."""
    if not layout.is_configured():
        raise UserError(f"renew-intermediate: no CA is configured under {layout.prefix} (no {layout.ca_json}); "
                        "run `ca-appliance setup`")
    config = json.loads(layout.ca_json.read_text())
    root_cert = pki.load_certificate(config["root"])
    previous = pki.load_certificate(config["crt"])
    password = layout.password_file.read_text(encoding="utf-8").strip()
    if root_key_file is not None:
        # An offline root key has its own passphrase; older appliances encrypted it with the CA password.
        root_key = load_root_key(root_key_file, root_key_passphrase or password, root_cert, "--root-key")
    else:
        kept = layout.secrets_dir / ROOT_KEY
        if not kept.exists():
            raise UserError(f"renew-intermediate: the root key is not on this appliance (no {kept}); "
                            "bring it on a USB stick or over SSH and give --root-key FILE")
        root_key = load_root_key(kept, password, root_cert, "root key")
    cert, key = new_intermediate(root_cert, root_key, previous, now=now)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = pki.encrypted_pem(key, password)

    step_user = system.ensure_step_user() if use_system and layout.is_system else None
    replace.recover(layout)   # a swap a crash left half done is undone first
    staging = Staging(journal=layout.replace_journal)
    current = "stage files"
    try:
        tree = staging.stage_dir(layout.steppath)
        _copy_tree(layout.steppath, tree)
        certs, secrets = tree / layout.certs_dir.relative_to(layout.steppath), tree / "secrets"
        write_file(certs / "intermediate_ca.crt.previous", layout.intermediate_cert.read_bytes(), 0o644)
        write_file(secrets / f"{INTERMEDIATE_KEY}.previous", (layout.secrets_dir / INTERMEDIATE_KEY).read_bytes(),
                   0o600)
        write_file(certs / "intermediate_ca.crt", cert_pem, 0o644)
        if (certs / cajson.ROOT_CRL_FILE).is_file():   # the root's CRL must cover the new intermediate's life
            write_file(certs / cajson.ROOT_CRL_FILE, pki.root_crl(root_cert, root_key, pki.not_after(cert)), 0o644)
        write_file(secrets / INTERMEDIATE_KEY, key_pem, 0o600)
        current = "set owners and modes"
        # the one table (layout.OWNERSHIP): step's files to step, the root key root's (0600)
        layout.apply_ownership(tree, layout.steppath, layout.accounts(step_user))
        current = "move files into place"
        staging.swap()
        state = json.loads(layout.state_file.read_text()) if layout.state_file.exists() else {}
        state["intermediate_renewed_at"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        staging.replace_file(layout.state_file, json.dumps(state, indent=2) + "\n", 0o644)
        layout.apply_ownership(layout.state_file, accounts=layout.accounts(step_user))
        staging.commit()
    except (OSError, StepFailed) as error:
        staging.rollback()
        detail = error.detail if isinstance(error, StepFailed) else str(error)
        raise StepFailed(f"renew-intermediate ({current})", f"{detail}; the previous intermediate was kept") from None
    except BaseException:
        staging.rollback()
        raise
    clientpage.publish(layout)   # the page's copy of the root's CRL, which now covers the new intermediate
    if use_system and layout.is_system:
        system.restore_selinux_labels(layout.steppath, layout.state_dir)
        reload_service()
    return cert


def _copy_tree(source, target):
    """STEPPATH's files and directories into the staged tree (its owners and modes come from the table);
    anything else (a link, a device) is refused rather than copied or followed."""
    for directory, dirnames, filenames in os.walk(source):
        relative = Path(directory).relative_to(source)
        for name in dirnames:
            path = Path(directory) / name
            if path.is_symlink():
                raise StepFailed("renew-intermediate (stage files)", f"{path} is a symbolic link; "
                                 "the CA's tree holds only files and directories")
            (target / relative / name).mkdir(mode=0o700)
        for name in filenames:
            path = Path(directory) / name
            if not stat.S_ISREG(os.lstat(path).st_mode):
                raise StepFailed("renew-intermediate (stage files)", f"{path} is not a regular file; "
                                 "the CA's tree holds only files and directories")
            write_file(target / relative / name, path.read_bytes(), 0o600, durable=False)


def reload_service():
    """SIGHUP through the unit's ExecReload: step-ca re-reads ca.json and its intermediate."""
    if system.service_state() in ("active", "reloading"):
        system.run("reload step-ca", ["systemctl", "reload", SERVICE])
