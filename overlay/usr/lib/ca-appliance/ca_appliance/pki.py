"""The CA's keys and certificates, made with `cryptography` in memory; nothing here touches disk.

Root: self-signed, pathlen 1. Intermediate: signed by the root, pathlen 0, optionally with
X.509 name constraints. Keys are serialized as encrypted PKCS#8 (PBES2, AES-256-CBC), which
step-ca's pemutil reads with the password it is started with.
"""
import base64
import datetime
import hashlib
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

KEY_TYPES = {
    "EC-P256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "EC-P384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "RSA-3072": lambda: rsa.generate_private_key(public_exponent=65537, key_size=3072),
    "RSA-4096": lambda: rsa.generate_private_key(public_exponent=65537, key_size=4096),
}
# Same leeway as step: a certificate valid from "now" is refused by a client a second behind.
BACKDATE = datetime.timedelta(minutes=1)
DAYS_PER_YEAR = 365


def generate_key(key_type):
    try:
        return KEY_TYPES[key_type]()
    except KeyError:
        raise ValueError(f"unknown key type {key_type!r}: use one of {', '.join(KEY_TYPES)}") from None


def _signature_hash(key):
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def _ca_certificate(subject, subject_key, issuer, issuer_key, years, path_length, constraints=None,
                    issuer_cert=None, now=None, crl_url=None):
    now = now or datetime.datetime.now(datetime.UTC)
    public_key = subject_key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=DAYS_PER_YEAR * years))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False),
            critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if issuer_cert is not None:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    if constraints is not None:
        builder = builder.add_extension(constraints, critical=True)
    if crl_url is not None:
        builder = builder.add_extension(crl_distribution_points(crl_url), critical=False)
    return builder.sign(issuer_key, _signature_hash(issuer_key))


def crl_distribution_points(url):
    return x509.CRLDistributionPoints([x509.DistributionPoint(
        full_name=[x509.UniformResourceIdentifier(url)], relative_name=None, reasons=None, crl_issuer=None)])


def root_crl(root_cert, root_key, next_update, now=None):
    """The root's CRL (DER): empty (the root has revoked nothing), valid until `next_update` (the
    intermediate's end: the root key is offline or sealed, so the CRL lives as long as what it
    speaks for). Renewing the intermediate issues a new one."""
    now = now or datetime.datetime.now(datetime.UTC)
    ski = root_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    crl = (x509.CertificateRevocationListBuilder()
           .issuer_name(root_cert.subject)
           .last_update(now - BACKDATE)
           .next_update(next_update)
           .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
           .sign(root_key, _signature_hash(root_key)))
    return crl.public_bytes(serialization.Encoding.DER)


def name_constraints(dns_domains, ip_networks):
    """X.509 NameConstraints permitting only these DNS domains and IP networks; None when both are empty.

    A permitted DNS subtree also permits the domain's subdomains (RFC 5280 4.2.1.10). When only
    one kind is listed, the other kind is left unconstrained.
    """
    permitted = [x509.DNSName(domain) for domain in dns_domains]
    permitted += [x509.IPAddress(ipaddress.ip_network(network)) for network in ip_networks]
    if not permitted:
        return None
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def name_permitted(name, dns_domains, ip_networks):
    """Whether a SAN (DNS name or IP) falls within the name constraints (empty lists: no constraint)."""
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        if not dns_domains:
            return True
        for domain in dns_domains:
            if domain.startswith("."):
                if name.endswith(domain):
                    return True
            elif name == domain or name.endswith("." + domain):
                return True
        return False
    if not ip_networks:
        return True
    return any(address in ipaddress.ip_network(network) for network in ip_networks)


@dataclass
class CAMaterial:
    """Everything setup writes about the PKI, serialized (PEM bytes, OpenSSH text)."""
    root_cert_pem: bytes
    root_key_pem: bytes          # encrypted PKCS#8
    intermediate_cert_pem: bytes
    intermediate_key_pem: bytes  # encrypted PKCS#8
    root_fingerprint: str        # SHA-256 of the root's DER, hex, as `step certificate fingerprint`
    intermediate_not_after: datetime.datetime
    root_crl_der: bytes = None   # the root's CRL, when the intermediate names where to fetch it
    ssh_host_key_pem: bytes = None
    ssh_host_pub: str = None
    ssh_user_key_pem: bytes = None
    ssh_user_pub: str = None


# PBKDF2-HMAC-SHA256 rounds for the key files: what step's current library (go.step.sm/crypto) and
# OWASP use. cryptography 38's BestAvailableEncryption leaves OpenSSL's default of 2048 and offers no
# knob for PKCS#8 (its encryption_builder covers OpenSSH and PKCS#12 only), so the PKCS#8
# EncryptedPrivateKeyInfo is composed here: the same PBES2 / AES-256-CBC structure OpenSSL writes.
# The root key (offline, or kept root-only) gets the full 600000: nothing decrypts it but its owner.
# The keys step-ca opens at every start (intermediate, SSH CAs) get 100000 (as the JWE used to): they
# sit beside password.txt anyway, and step-ca under emulation (TCG) must still start in seconds.
ROOT_KEY_PBKDF2_ITERATIONS = 600000
KEY_FILE_PBKDF2_ITERATIONS = 100000
_OID_PBES2 = bytes.fromhex("06092a864886f70d01050d")
_OID_PBKDF2 = bytes.fromhex("06092a864886f70d01050c")
_OID_HMAC_SHA256 = bytes.fromhex("06082a864886f70d0209")
_OID_AES256_CBC = bytes.fromhex("060960864801650304012a")


def _der(tag, content):
    size = len(content)
    if size < 0x80:
        length = bytes([size])
    else:
        raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _der_int(value):
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def encrypted_pem(key, password, iterations=KEY_FILE_PBKDF2_ITERATIONS):
    """Encrypted PKCS#8 PEM (PBES2: PBKDF2-HMAC-SHA256 `iterations`, AES-256-CBC), readable by
    step-ca's pemutil, OpenSSL and cryptography."""
    import os

    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

    plain = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    salt, iv = os.urandom(16), os.urandom(16)
    derived = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=iterations).derive(
        password.encode("utf-8"))
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(derived), modes.CBC(iv)).encryptor()
    sealed = encryptor.update(padder.update(plain) + padder.finalize()) + encryptor.finalize()
    prf = _der(0x30, _OID_HMAC_SHA256 + b"\x05\x00")
    kdf = _der(0x30, _OID_PBKDF2 + _der(0x30, _der(0x04, salt) + _der_int(iterations) + prf))
    scheme = _der(0x30, _OID_AES256_CBC + _der(0x04, iv))
    algorithm = _der(0x30, _OID_PBES2 + _der(0x30, kdf + scheme))
    der = _der(0x30, algorithm + _der(0x04, sealed))
    body = base64.encodebytes(der).decode("ascii").replace("\n", "")
    lines = "\n".join(body[i:i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN ENCRYPTED PRIVATE KEY-----\n{lines}\n-----END ENCRYPTED PRIVATE KEY-----\n".encode("ascii")


def fingerprint(cert):
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def openssh_public(key, comment):
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode("ascii")
    return f"{line} {comment}\n"


def create_ca(name, password, *, key_type="EC-P256", root_years=10, intermediate_years=5,
              permitted_dns=(), permitted_ip=(), ssh=False, root_password=None, root_crl_url=None):
    """A new root, intermediate and (with ssh) SSH host and user CA keys, all under `password`
    (the root key under `root_password` when given: an offline root key has its own).
    root_crl_url: where the intermediate's revocation status is published (the root's CRL)."""
    root_key = generate_key(key_type)
    intermediate_key = generate_key(key_type)
    root_subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                              x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Root CA")])
    intermediate_subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                                      x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Intermediate CA")])
    root = _ca_certificate(root_subject, root_key, root_subject, root_key, root_years, path_length=1)
    intermediate = _ca_certificate(
        intermediate_subject, intermediate_key, root_subject, root_key, intermediate_years, path_length=0,
        constraints=name_constraints(permitted_dns, permitted_ip), issuer_cert=root, crl_url=root_crl_url)
    # step ca init makes the SSH CA keys EC P-256 whatever the X.509 key type.
    ssh_keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(2)] if ssh else []
    # Sealing each key file is PBKDF2 (the bulk of the time): all of them at once, one per core.
    root_key_pem, intermediate_key_pem, *ssh_key_pems = in_parallel(
        lambda: encrypted_pem(root_key, root_password or password, ROOT_KEY_PBKDF2_ITERATIONS),
        lambda: encrypted_pem(intermediate_key, password),
        *[lambda key=key: encrypted_pem(key, password) for key in ssh_keys])
    pem = serialization.Encoding.PEM
    material = CAMaterial(
        root_cert_pem=root.public_bytes(pem),
        root_key_pem=root_key_pem,
        intermediate_cert_pem=intermediate.public_bytes(pem),
        intermediate_key_pem=intermediate_key_pem,
        root_fingerprint=fingerprint(root),
        intermediate_not_after=not_after(intermediate),
        root_crl_der=root_crl(root, root_key, not_after(intermediate)) if root_crl_url else None,
    )
    if ssh:
        host_key, user_key = ssh_keys
        material.ssh_host_key_pem, material.ssh_user_key_pem = ssh_key_pems
        material.ssh_host_pub = openssh_public(host_key, f"{name} SSH host CA")
        material.ssh_user_pub = openssh_public(user_key, f"{name} SSH user CA")
    return material


def in_parallel(*calls):
    """The results of the zero-argument `calls`, in order, run at the same time in threads: PBKDF2
    (OpenSSL, through cryptography) runs without the GIL, so N derivations take the time of
    N / cores, not N. The first call to fail raises its error."""
    if len(calls) < 2:
        return [call() for call in calls]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result() for future in futures]


def load_certificate(path):
    with open(path, "rb") as handle:
        return x509.load_pem_x509_certificate(handle.read())


def not_after(cert):
    """not_valid_after as an aware datetime on both cryptography 38 and the newest."""
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=datetime.UTC)


def crl_updates(crl):
    """(last_update, next_update or None) as aware datetimes on cryptography 38 and the newest."""
    if hasattr(crl, "last_update_utc"):
        return crl.last_update_utc, crl.next_update_utc
    following = crl.next_update
    return (crl.last_update.replace(tzinfo=datetime.UTC),
            following.replace(tzinfo=datetime.UTC) if following else None)
