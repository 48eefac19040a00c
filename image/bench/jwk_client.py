"""The JWK provisioner flow as `step ca certificate` drives it, for `invoke verify`'s checks and
`invoke bench` (no step CLI needed): open the provisioner's encryptedKey with the CA password,
sign a one-time token, POST /1.0/sign.

Works against any step-ca reachable over HTTPS (a local one, or an appliance through a forwarded
port): everything comes from the CA's public /1.0/provisioners and the root the caller trusts.
"""
from __future__ import annotations

import ipaddress
import json
import secrets
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import jwcrypto.jwa
import jwcrypto.jwe
import jwcrypto.jwk
import jwcrypto.jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# step writes PBES2 with 100000 rounds; jwcrypto >= 1.5 refuses more than 16384 unless told.
if hasattr(jwcrypto.jwa, "default_max_pbkdf2_iterations"):
    jwcrypto.jwa.default_max_pbkdf2_iterations = max(jwcrypto.jwa.default_max_pbkdf2_iterations, 1_000_000)


class CAError(Exception):
    """The CA answered with an error status (the status and its message are in str())."""


def fetch_root(ca_url: str, timeout: float = 60) -> bytes:
    """/roots.pem without trusting anything yet (the caller compares its fingerprint, or is only
    measuring): the one unverified request a client of the appliance makes."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(f"{ca_url}/roots.pem", context=context, timeout=timeout) as response:
        return response.read()


def _request(url: str, cafile: str, body: dict | None = None, timeout: float = 60):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    context = ssl.create_default_context(cafile=str(cafile))
    try:
        with urllib.request.urlopen(request, context=context, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        raise CAError(f"{url}: HTTP {error.code}: {error.read()[:300].decode(errors='replace')}") from None


def root_fingerprint(root_pem: bytes) -> str:
    """SHA-256 of the root's DER, lower-case hex (the token's `sha` claim, `step certificate fingerprint`)."""
    return x509.load_pem_x509_certificate(root_pem).fingerprint(hashes.SHA256()).hex()


def jwk_provisioner(ca_url: str, cafile: str, name: str | None = None) -> dict:
    """The first JWK provisioner (or the one called `name`) from the CA's public list."""
    listing = _request(f"{ca_url}/1.0/provisioners", cafile)
    for provisioner in listing.get("provisioners", []):
        if provisioner.get("type") == "JWK" and (name is None or provisioner.get("name") == name):
            return provisioner
    raise CAError(f"{ca_url}/1.0/provisioners lists no JWK provisioner{f' named {name}' if name else ''}")


def provisioner_key(provisioner: dict, password: str) -> jwcrypto.jwk.JWK:
    """The provisioner's private key, decrypted from its encryptedKey (PBES2 JWE) with the password."""
    jwe = jwcrypto.jwe.JWE()
    jwe.deserialize(provisioner["encryptedKey"], key=jwcrypto.jwk.JWK.from_password(password))
    return jwcrypto.jwk.JWK.from_json(jwe.payload)


def one_time_token(key: jwcrypto.jwk.JWK, provisioner: dict, audience: str, subject: str, sans: list[str],
                   fingerprint: str, lifetime: int = 300) -> str:
    """A JWT like `step ca token`: iss = provisioner name, aud = the CA's sign URL, a jti, the SANs."""
    now = int(time.time())
    claims = {"iss": provisioner["name"], "sub": subject, "aud": audience, "nbf": now, "iat": now,
              "exp": now + lifetime, "jti": secrets.token_hex(16), "sha": fingerprint, "sans": sans}
    header = {"alg": provisioner["key"].get("alg", "ES256"), "typ": "JWT", "kid": provisioner["key"]["kid"]}
    token = jwcrypto.jwt.JWT(header=header, claims=claims)
    token.make_signed_token(key)
    return token.serialize()


def new_csr(subject: str, sans: list[str]) -> tuple[bytes, bytes]:
    """(private key PEM, CSR PEM) for an EC P-256 key."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = []
    for san in sans:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            names.append(x509.DNSName(san))
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
           .add_extension(x509.SubjectAlternativeName(names), critical=False)
           .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


@dataclass
class Issued:
    certificate: bytes      # the leaf, PEM
    chain: bytes            # the intermediate(s), PEM
    key: bytes              # the leaf's private key, PEM


class JWKClient:
    """Issues certificates from one CA with its JWK provisioner.

    ca_url: where this client reaches the CA (e.g. https://127.0.0.1:40443);
    audience_base: the CA's own URL as its tokens name it (https://<one of its DNS names>[:port]),
    which differs from ca_url when the CA is reached through a forwarded port.
    """

    def __init__(self, ca_url: str, cafile: str, password: str, audience_base: str | None = None,
                 provisioner_name: str | None = None):
        self.ca_url = ca_url.rstrip("/")
        self.cafile = str(cafile)
        self.audience = f"{(audience_base or ca_url).rstrip('/')}/1.0/sign"
        with open(cafile, "rb") as f:
            self.fingerprint = root_fingerprint(f.read())
        self.provisioner = jwk_provisioner(self.ca_url, self.cafile, provisioner_name)
        self.key = provisioner_key(self.provisioner, password)

    def issue(self, subject: str, sans: list[str] | None = None) -> Issued:
        sans = sans or [subject]
        key_pem, csr_pem = new_csr(subject, sans)
        token = one_time_token(self.key, self.provisioner, self.audience, subject, sans, self.fingerprint)
        reply = _request(f"{self.ca_url}/1.0/sign", self.cafile, {"csr": csr_pem.decode(), "ott": token})
        chain = reply.get("certChain") or [reply["crt"], reply["ca"]]
        return Issued(chain[0].encode(), "".join(chain[1:]).encode(), key_pem)
