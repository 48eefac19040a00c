"""Opening the JWEs the guest writes: test-only (the appliance never decrypts one; step-ca does).

Kept out of the image on purpose: the guest package ships only what the appliance runs.
"""
import json

from ca_appliance.jose import (
    CONTENT_ENC,
    PBES2_ALG,
    _password_bytes,
    _pbes2_key,
    b64url_decode,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap

# Refuse absurd counts: a hostile JWE could otherwise burn minutes of CPU.
MAX_PBKDF2_ITERATIONS = 1000000


def decrypt_pbes2(compact, password):
    """(header, plaintext) of a compact PBES2-HS256+A128KW / A256GCM JWE; ValueError if it does not open."""
    parts = compact.strip().split(".")
    if len(parts) != 5:
        raise ValueError("not a compact JWE (expected 5 dot-separated parts)")
    protected, encrypted_key, iv, ciphertext, tag = parts
    header = json.loads(b64url_decode(protected))
    if header.get("alg") != PBES2_ALG or header.get("enc") != CONTENT_ENC:
        raise ValueError(f"unsupported JWE algorithms {header.get('alg')}/{header.get('enc')}")
    iterations = header.get("p2c")
    if not isinstance(iterations, int) or not 1000 <= iterations <= MAX_PBKDF2_ITERATIONS:
        raise ValueError(f"unsupported PBES2 count {iterations!r}")
    kek = _pbes2_key(_password_bytes(password), b64url_decode(header["p2s"]), iterations)
    try:
        cek = aes_key_unwrap(kek, b64url_decode(encrypted_key))
        plaintext = AESGCM(cek).decrypt(b64url_decode(iv), b64url_decode(ciphertext) + b64url_decode(tag),
                                        protected.encode("ascii"))
    except Exception as error:  # InvalidUnwrap / InvalidTag: a wrong password, in practice
        raise ValueError("the JWE does not open with this password") from error
    return header, plaintext
