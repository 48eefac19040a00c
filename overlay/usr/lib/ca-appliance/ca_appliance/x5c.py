"""Which certificates an X5C provisioner may trust as roots (ca.x5c_roots), for setup and restore.

Whoever holds a certificate chaining to an X5C root may ask step-ca for ANY name, so a root is refused
when it is:
  - not a CA certificate (basicConstraints CA:TRUE);
  - this CA's own root or intermediate (any ACME or JWK leaf would then mint every name), matched by
    certificate and by public key (a re-issued certificate of the same key is the same trust);
  - in the system's public trust bundle (anyone with a public web certificate could sign tokens).
Messages name a certificate by its number, subject and SHA-256 fingerprint (all public), never more.
The functions raise X5CRefused (a ValueError) with one line; callers put their key in front.
"""

import base64
import functools
import hashlib
import os
import re
import warnings

# The distributions' extracted public trust bundles: the first that exists is used.
TRUST_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",                  # Debian, Ubuntu
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",   # Fedora, RHEL
    "/etc/pki/tls/certs/ca-bundle.crt",                    # Fedora, RHEL (compatibility link)
)
MAX_BYTES = 256 * 1024
_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.DOTALL)


class X5CRefused(ValueError):
    """One line saying why a bundle can't be X5C roots (no certificate content beyond subject and fingerprint)."""


def pem_blocks(data):
    """The PEM certificate blocks in text or bytes, in order."""
    if isinstance(data, str):
        data = data.encode("utf-8", "replace")
    return _PEM_CERTIFICATE.findall(data)


def fingerprint(cert):
    from cryptography.hazmat.primitives import hashes

    return cert.fingerprint(hashes.SHA256()).hex()


def key_id(cert):
    """SHA-256 of the certificate's SubjectPublicKeyInfo: the same key, whatever certificate carries it."""
    from cryptography.hazmat.primitives import serialization

    return hashlib.sha256(cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def describe(cert):
    """'CN=..., SHA-256 ab:cd:...' as the review screen and messages show a certificate."""
    subject = cert.subject.rfc4514_string() or "(empty subject)"
    subject = "".join(char if char.isprintable() else "?" for char in subject)[:120]
    return f"{subject}, SHA-256 {fingerprint(cert)}"


def load_certificate(block):
    """One PEM certificate. A serial number of 0 (RFC 5280 wants it positive) makes cryptography 4x
    print a deprecation warning, a stray stderr line beside the one-line messages: not shown."""
    from cryptography import x509

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Parsed a serial number which wasn't positive")
        return x509.load_pem_x509_certificate(block)


def load(data):
    """[(block bytes, certificate)] of a PEM bundle; X5CRefused when empty or unreadable."""
    blocks = pem_blocks(data)
    if not blocks:
        raise X5CRefused("holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    loaded = []
    for number, block in enumerate(blocks, 1):
        if not block.isascii():
            raise X5CRefused(f"certificate {number} is not a readable PEM certificate (non-ASCII text)")
        try:
            loaded.append((block, load_certificate(block)))
        except ValueError:
            raise X5CRefused(f"certificate {number} is not a readable PEM certificate") from None
    return loaded


def trust_bundle_path(candidates=TRUST_BUNDLES):
    """The system's public trust bundle (the first of candidates that exists), or None."""
    return next((path for path in candidates if os.path.isfile(path)), None)


@functools.lru_cache(maxsize=4)
def _public_ids(path, _mtime, _size):
    with open(path, "rb") as handle:
        data = handle.read()
    ids = set()
    for block in pem_blocks(data):
        try:
            # the fingerprint from the bytes, not from a parse: public roots with serial number 0
            # (Go Daddy and Starfield G2, HARICA 2015, SECOM RootCA2) make cryptography >= 4x warn,
            # and a later release refuse to load them; they stay refused as X5C roots either way
            ids.add(hashlib.sha256(base64.b64decode(b"".join(block.splitlines()[1:-1]))).hexdigest())
            cert = load_certificate(block)
        except ValueError:
            continue
        ids.add(key_id(cert))
    return frozenset(ids)


def public_ids(path):
    """Fingerprints and key ids of every certificate in the bundle at path (empty when unreadable)."""
    if path is None:
        return frozenset()
    try:
        status = os.stat(path)
        return _public_ids(path, status.st_mtime_ns, status.st_size)
    except OSError:
        return frozenset()


def own_chain_problem(roots, chain):
    """None, or why `roots` (PEM text/bytes) includes a certificate of `chain` (this CA's root and
    intermediate PEMs), by certificate or by public key. For restore: a backup's X5C provisioner."""
    own = set()
    for pem in chain:
        for block in pem_blocks(pem):
            try:
                cert = load_certificate(block)
            except ValueError:
                continue
            own.add(fingerprint(cert))
            own.add(key_id(cert))
    try:
        loaded = load(roots)
    except X5CRefused as refused:
        return str(refused)
    for number, (_block, cert) in enumerate(loaded, 1):
        if fingerprint(cert) in own or key_id(cert) in own:
            return (f"certificate {number} ({describe(cert)}) is this CA's own root or intermediate: "
                    "X5C would let any ACME or JWK certificate of this CA obtain any name")
    return None


def check_roots(data, chain=(), bundle=TRUST_BUNDLES):
    """The normalised PEM bundle (one certificate after another, LF line ends) of valid X5C roots.

    chain: this CA's own certificates (root, intermediate) when they exist already.
    bundle: candidate paths of the public trust bundle (the first that exists), or one path."""
    from cryptography import x509

    if isinstance(data, str) and len(data.encode("utf-8", "replace")) > MAX_BYTES or \
            isinstance(data, bytes) and len(data) > MAX_BYTES:
        raise X5CRefused(f"is larger than {MAX_BYTES // 1024} KiB")
    loaded = load(data)
    public = public_ids(trust_bundle_path((bundle,) if isinstance(bundle, str) else bundle))
    roots = []
    for number, (block, cert) in enumerate(loaded, 1):
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        except ValueError:  # a malformed extension
            raise X5CRefused(f"certificate {number} has unreadable extensions") from None
        if constraints is None or not constraints.ca:
            raise X5CRefused(f"certificate {number} ({describe(cert)}) is not a CA certificate "
                             "(basicConstraints CA:TRUE)")
        if fingerprint(cert) in public or key_id(cert) in public:
            raise X5CRefused(f"certificate {number} ({describe(cert)}) is in the system's public trust "
                             "bundle: X5C must trust only your own organisation's CA")
        roots.append(block.decode("ascii").replace("\r\n", "\n") + "\n")
    problem = own_chain_problem(data, chain) if chain else None
    if problem:
        raise X5CRefused(problem)
    return "".join(roots)


def summary(data):
    """[describe(cert)] for each certificate of a bundle the validator accepted (the review screen)."""
    return [describe(cert) for _block, cert in load(data)]
