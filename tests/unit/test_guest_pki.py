"""The guest's PKI and JOSE code under the newest libraries (the venv's cryptography and jwcrypto);
the integration tests run the same code under Debian 12's. The provisioner key's JWE is checked
against jwcrypto and against step's own Go code (go.step.sm/crypto/jose)."""
import datetime
import ipaddress
import json
import os
import shutil
import subprocess
from pathlib import Path

import jwcrypto.jwa
import jwcrypto.jwe
import jwcrypto.jwk
import pytest
from ca_appliance import jose, pki
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from helpers.jose_decrypt import decrypt_pbes2

GUEST_LIB = Path(__file__).resolve().parents[2] / "overlay/usr/lib/ca-appliance"

PASSWORD = "unit-test-password"
jwcrypto.jwa.default_max_pbkdf2_iterations = 1000000  # the appliance writes 600000 rounds


@pytest.fixture(scope="module")
def ec_material():
    return pki.create_ca("Unit CA", PASSWORD, ssh=True)


def load(pem):
    return x509.load_pem_x509_certificate(pem)


def test_pbes2_jwe_opens_with_jwcrypto_and_says_what_it_is():
    key = ec.generate_private_key(ec.SECP256R1())
    compact = jose.encrypted_private_jwk(key, PASSWORD)
    jwe = jwcrypto.jwe.JWE()
    jwe.deserialize(compact, key=jwcrypto.jwk.JWK.from_password(PASSWORD))
    assert jwe.jose_header == {"alg": "PBES2-HS256+A128KW", "enc": "A256GCM", "cty": "jwk+json",
                               "p2c": 600000, "p2s": jwe.jose_header["p2s"]}
    opened = jwcrypto.jwk.JWK.from_json(jwe.payload)
    assert opened.thumbprint() == jose.public_jwk(key)["kid"]
    assert int.from_bytes(jose.b64url_decode(opened["d"]), "big") == key.private_numbers().private_value


def test_pbes2_jwe_from_jwcrypto_opens_here_and_wrong_password_does_not():
    jwe = jwcrypto.jwe.JWE(b'{"kty":"oct"}', protected={"alg": "PBES2-HS256+A128KW", "enc": "A256GCM",
                                                        "p2c": 100000, "cty": "jwk+json"})
    jwe.add_recipient(jwcrypto.jwk.JWK.from_password(PASSWORD))
    compact = jwe.serialize(compact=True)
    header, plaintext = decrypt_pbes2(compact, PASSWORD)
    assert plaintext == b'{"kty":"oct"}' and header["p2c"] == 100000
    with pytest.raises(ValueError, match="does not open"):
        decrypt_pbes2(compact, "not the password")


def test_public_jwk_matches_jwcrypto_thumbprint_and_is_public_only():
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = jose.public_jwk(key)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert jwk["kid"] == jwcrypto.jwk.JWK.from_pem(pem).thumbprint()
    assert set(jwk) == {"use", "kty", "kid", "crv", "alg", "x", "y"}
    assert (jwk["alg"], jwk["crv"], jwk["use"]) == ("ES256", "P-256", "sig")


GO_JOSE_PROGRAM = """
package main

import (
	"fmt"
	"io"
	"os"

	"go.step.sm/crypto/jose"
)

func main() {
	password := []byte(os.Args[2])
	if os.Args[1] == "encrypt" {
		jwk, err := jose.GenerateJWK("EC", "P-256", "ES256", "sig", "", 0)
		if err == nil {
			var jwe *jose.JSONWebEncryption
			if jwe, err = jose.EncryptJWK(jwk, password); err == nil {
				var s string
				s, err = jwe.CompactSerialize()
				fmt.Print(s)
			}
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	data, _ := io.ReadAll(os.Stdin)
	enc, err := jose.ParseEncrypted(string(data))
	if err == nil {
		var out []byte
		if out, err = enc.Decrypt(password); err == nil {
			os.Stdout.Write(out)
			return
		}
	}
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
"""
STEP_CA_MODULE = Path(__file__).resolve().parents[2] / "image/go/step-ca"


@pytest.fixture(scope="module")
def go_jose(tmp_path_factory):
    """A tiny program on step's own JOSE package, at the go.step.sm/crypto version the pinned step-ca
    is built with (its go.mod and go.sum, so every module is verified as for the release build)."""
    from image.cache import cache_dir
    from image.errors import UserError
    from image.stepbuild import find_go

    try:
        go = find_go((1, 25))
    except UserError as error:
        pytest.skip(f"no Go toolchain to build step's JOSE against: {error}")
    work = tmp_path_factory.mktemp("gojose")
    for name in ("go.mod", "go.sum"):
        shutil.copy(STEP_CA_MODULE / name, work / name)
    (work / "main.go").write_text(GO_JOSE_PROGRAM)
    gocache = cache_dir() / "go" / "gocache"
    if not os.access(gocache if gocache.exists() else gocache.parent.parent, os.W_OK):
        gocache = work / "gocache"   # a read-only cache (the newest-userland tier binds it so): our own
    env = dict(os.environ, GOTOOLCHAIN="local", GOFLAGS="-mod=readonly", GOSUMDB="off", CGO_ENABLED="0",
               GOCACHE=str(gocache))
    build = subprocess.run([go, "build", "-o", str(work / "gojose"), "."], cwd=work, env=env,
                           capture_output=True, text=True)
    from image.stepbuild import UNREACHABLE
    if build.returncode != 0 and UNREACHABLE.search(build.stderr):   # e.g. the newest-userland tier's chroot
        pytest.skip(f"go.step.sm/crypto is not in this machine's module cache and no proxy answers: "
                    f"{build.stderr.strip().splitlines()[-1]}")
    assert build.returncode == 0, build.stderr
    return work / "gojose"


def test_step_decrypts_our_encrypted_key(go_jose):
    key = ec.generate_private_key(ec.SECP256R1())
    opened = subprocess.run([str(go_jose), "decrypt", PASSWORD], input=jose.encrypted_private_jwk(key, PASSWORD),
                            capture_output=True, text=True)
    assert opened.returncode == 0, opened.stderr
    assert json.loads(opened.stdout)["d"] == jose.private_jwk(key)["d"]
    wrong = subprocess.run([str(go_jose), "decrypt", "nope"], input=jose.encrypted_private_jwk(key, PASSWORD),
                           capture_output=True, text=True)
    assert wrong.returncode != 0


def test_we_decrypt_steps_encrypted_key(go_jose):
    made = subprocess.run([str(go_jose), "encrypt", PASSWORD], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    header, plaintext = decrypt_pbes2(made.stdout, PASSWORD)
    assert (header["cty"], header["p2c"]) == ("jwk+json", 600000)   # step 0.30's count, as ours
    assert json.loads(plaintext)["kty"] == "EC"


def test_root_and_intermediate(ec_material):
    root, intermediate = load(ec_material.root_cert_pem), load(ec_material.intermediate_cert_pem)
    assert root.subject == root.issuer and intermediate.issuer == root.subject
    intermediate.verify_directly_issued_by(root)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 1
    assert intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    usage = intermediate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    with pytest.raises(x509.ExtensionNotFound):
        intermediate.extensions.get_extension_for_class(x509.NameConstraints)
    assert ec_material.root_fingerprint == root.fingerprint(hashes.SHA256()).hex()


def test_keys_are_encrypted_pkcs8_under_the_password(ec_material):
    for pem in (ec_material.root_key_pem, ec_material.intermediate_key_pem, ec_material.ssh_host_key_pem,
                ec_material.ssh_user_key_pem):
        assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        serialization.load_pem_private_key(pem, password=PASSWORD.encode())
    intermediate_key = serialization.load_pem_private_key(ec_material.intermediate_key_pem, PASSWORD.encode())
    assert intermediate_key.public_key() == load(ec_material.intermediate_cert_pem).public_key()


def test_each_key_file_seals_the_key_of_its_own_certificate_or_public_key(ec_material):
    """The key files are sealed side by side (pki.in_parallel): each must still hold its own key."""
    def opened(pem):
        return serialization.load_pem_private_key(pem, PASSWORD.encode())
    assert opened(ec_material.root_key_pem).public_key() == load(ec_material.root_cert_pem).public_key()
    for pem, line in ((ec_material.ssh_host_key_pem, ec_material.ssh_host_pub),
                      (ec_material.ssh_user_key_pem, ec_material.ssh_user_pub)):
        public = opened(pem).public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                       serialization.PublicFormat.OpenSSH).decode()
        assert line.split()[:2] == public.split()


def test_in_parallel_keeps_the_order_and_raises_the_first_failure():
    assert pki.in_parallel(lambda: 1, lambda: 2, lambda: 3) == [1, 2, 3]
    assert pki.in_parallel(lambda: "alone") == ["alone"]

    def fails():
        raise ValueError("this one")
    with pytest.raises(ValueError, match="this one"):
        pki.in_parallel(lambda: 1, fails)


def test_ssh_ca_public_keys_are_openssh_lines(ec_material):
    for line in (ec_material.ssh_host_pub, ec_material.ssh_user_pub):
        assert line.startswith("ecdsa-sha2-nistp256 ")
        serialization.load_ssh_public_key(" ".join(line.split()[:2]).encode())
    assert ec_material.ssh_host_pub != ec_material.ssh_user_pub


def test_no_ssh_keys_without_ssh():
    assert pki.create_ca("Unit CA", PASSWORD).ssh_host_key_pem is None


@pytest.mark.parametrize("key_type, expected", [
    ("EC-P384", lambda k: isinstance(k, ec.EllipticCurvePublicKey) and k.curve.name == "secp384r1"),
    ("RSA-3072", lambda k: isinstance(k, rsa.RSAPublicKey) and k.key_size == 3072),
    ("RSA-4096", lambda k: isinstance(k, rsa.RSAPublicKey) and k.key_size == 4096),
])
def test_key_types(key_type, expected):
    material = pki.create_ca("Unit CA", PASSWORD, key_type=key_type)
    root, intermediate = load(material.root_cert_pem), load(material.intermediate_cert_pem)
    assert expected(root.public_key()) and expected(intermediate.public_key())
    intermediate.verify_directly_issued_by(root)


def test_unknown_key_type_is_refused():
    with pytest.raises(ValueError, match="EC-P256"):
        pki.generate_key("DSA-1024")


def test_lifetimes_are_configurable():
    material = pki.create_ca("Unit CA", PASSWORD, root_years=3, intermediate_years=2)
    root, intermediate = load(material.root_cert_pem), load(material.intermediate_cert_pem)
    minute = datetime.timedelta(minutes=1)
    assert root.not_valid_after_utc - root.not_valid_before_utc == datetime.timedelta(days=3 * 365) + minute
    assert intermediate.not_valid_after_utc - intermediate.not_valid_before_utc == \
        datetime.timedelta(days=2 * 365) + minute
    assert material.intermediate_not_after == intermediate.not_valid_after_utc


def test_name_constraints_on_the_intermediate():
    material = pki.create_ca("Unit CA", PASSWORD, permitted_dns=["lab.example"], permitted_ip=["192.168.70.0/24"])
    extension = load(material.intermediate_cert_pem).extensions.get_extension_for_class(x509.NameConstraints)
    assert extension.critical
    assert extension.value.permitted_subtrees == [x509.DNSName("lab.example"),
                                                  x509.IPAddress(ipaddress.ip_network("192.168.70.0/24"))]
    assert extension.value.excluded_subtrees is None


@pytest.mark.parametrize("name, permitted", [
    ("lab.example", True), ("ca.lab.example", True), ("badlab.example", False), ("other.example", False),
    ("192.168.70.10", True), ("192.168.71.10", False),
])
def test_name_permitted(name, permitted):
    assert pki.name_permitted(name, ["lab.example"], ["192.168.70.0/24"]) is permitted


def test_leading_dot_means_subdomains_only_and_empty_means_anything():
    assert not pki.name_permitted("lab.example", [".lab.example"], [])
    assert pki.name_permitted("ca.lab.example", [".lab.example"], [])
    assert pki.name_permitted("anything.example", [], ["10.0.0.0/8"])
    assert pki.name_permitted("172.16.0.1", ["lab.example"], [])


def test_key_files_use_pbkdf2_sha256_with_the_raised_counts():
    import base64

    from cryptography.hazmat.primitives import serialization
    material = pki.create_ca("KDF CA", PASSWORD, root_password="root-passphrase-0123456789", ssh=False)

    def der(pem):
        return base64.b64decode("".join(pem.decode().splitlines()[1:-1]))

    # INTEGER 600000 / 100000 right after the 16-byte salt, then hmacWithSHA256 (as OpenSSL writes PBES2)
    assert b"\x02\x03\x09\x27\xc0\x30\x0c\x06\x08\x2a\x86\x48\x86\xf7\x0d\x02\x09" in der(material.root_key_pem)
    assert b"\x02\x03\x01\x86\xa0\x30\x0c\x06\x08\x2a\x86\x48\x86\xf7\x0d\x02\x09" in der(
        material.intermediate_key_pem)
    serialization.load_pem_private_key(material.root_key_pem, b"root-passphrase-0123456789")
    serialization.load_pem_private_key(material.intermediate_key_pem, PASSWORD.encode())
    with pytest.raises(ValueError):
        serialization.load_pem_private_key(material.root_key_pem, PASSWORD.encode())
