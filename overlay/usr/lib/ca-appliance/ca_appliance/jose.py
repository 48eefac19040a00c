"""The bits of JOSE the provisioner key needs, written against `cryptography` alone.

step-ca's JWK provisioner carries its public key as a JWK and its private key as a compact
JWE (PBES2-HS256+A128KW, A256GCM, cty jwk+json, 600000 PBKDF2 rounds), as `step ca init`
writes it with go.step.sm/crypto's current jose.EncryptJWK (step-ca itself never decrypts it:
the step CLI and the admin's clients do). jwcrypto 1.1 cannot write a
PBES2 count other than 8192 and jwcrypto >= 1.5 refuses to read more than 16384, so the
few primitives are composed here instead (RFC 7516, 7517, 7518 section 4.8, 7638).
"""
import base64
import hashlib
import json
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

PBES2_ALG = "PBES2-HS256+A128KW"
CONTENT_ENC = "A256GCM"
JWK_CONTENT_TYPE = "jwk+json"
# go.step.sm/crypto/jose.PBKDF2Iterations (600000 since it followed OWASP) and PBKDF2SaltSize.
PBKDF2_ITERATIONS = 600000
PBKDF2_SALT_SIZE = 16

_CURVES = {"P-256": (ec.SECP256R1, "ES256", 32), "P-384": (ec.SECP384R1, "ES384", 48)}


def b64url_encode(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text):
    if isinstance(text, str):
        text = text.encode("ascii")
    return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))


def _curve_of(key):
    for crv, (curve_class, alg, size) in _CURVES.items():
        if isinstance(key.curve, curve_class):
            return crv, alg, size
    raise ValueError(f"unsupported curve {key.curve.name}: use P-256 or P-384")


def _int_bytes(number, size):
    return number.to_bytes(size, "big")


def public_jwk(private_key):
    """The public JWK of an EC key, with kid (its RFC 7638 thumbprint), use and alg as step writes them."""
    crv, alg, size = _curve_of(private_key)
    numbers = private_key.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": crv,
        "x": b64url_encode(_int_bytes(numbers.x, size)),
        "y": b64url_encode(_int_bytes(numbers.y, size)),
    }
    return {"use": "sig", "kty": "EC", "kid": thumbprint(jwk), "crv": crv, "alg": alg,
            "x": jwk["x"], "y": jwk["y"]}


def private_jwk(private_key):
    """public_jwk() plus the private scalar d."""
    jwk = public_jwk(private_key)
    _, _, size = _curve_of(private_key)
    jwk["d"] = b64url_encode(_int_bytes(private_key.private_numbers().private_value, size))
    return jwk


def thumbprint(jwk):
    """RFC 7638 SHA-256 thumbprint of an EC JWK, base64url: step uses it as the key id."""
    members = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode("ascii")
    return b64url_encode(hashlib.sha256(canonical).digest())


def _pbes2_key(password, salt_input, iterations):
    # RFC 7518 4.8.1.1: the PBKDF2 salt is the alg name, a zero byte, then p2s.
    salt = PBES2_ALG.encode("ascii") + b"\x00" + salt_input
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=16, salt=salt, iterations=iterations)
    return kdf.derive(password)


def _password_bytes(password):
    return password.encode("utf-8") if isinstance(password, str) else password


def encrypt_pbes2(plaintext, password, content_type=JWK_CONTENT_TYPE, iterations=PBKDF2_ITERATIONS):
    """A compact JWE of plaintext (bytes) under password, as go.step.sm/crypto/jose.Encrypt makes it."""
    salt_input = os.urandom(PBKDF2_SALT_SIZE)
    header = {"alg": PBES2_ALG, "cty": content_type, "enc": CONTENT_ENC,
              "p2c": iterations, "p2s": b64url_encode(salt_input)}
    protected = b64url_encode(json.dumps(header, separators=(",", ":"), sort_keys=True).encode("ascii"))
    cek = os.urandom(32)
    encrypted_key = aes_key_wrap(_pbes2_key(_password_bytes(password), salt_input, iterations), cek)
    iv = os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode("ascii"))
    ciphertext, tag = sealed[:-16], sealed[-16:]
    return ".".join([protected, b64url_encode(encrypted_key), b64url_encode(iv),
                     b64url_encode(ciphertext), b64url_encode(tag)])



def encrypted_private_jwk(private_key, password):
    """The provisioner's `encryptedKey`: its private JWK, encrypted under the CA password."""
    data = json.dumps(private_jwk(private_key), separators=(",", ":")).encode("ascii")
    return encrypt_pbes2(data, password)
