"""The JWK, X5C and SSH provisioners driven as the `step` CLI drives them, in Python: open the
JWK's encryptedKey with the CA password, sign one-time tokens, POST /1.0/sign and /1.0/ssh/sign."""
import base64
import datetime
import ipaddress
import json
import secrets
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import jwcrypto.jwa
import jwcrypto.jwe
import jwcrypto.jwk
import jwcrypto.jwt
import pytest
from ca_helpers import PASSWORD, openssl_verify
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# The appliance writes PBES2 with 600000 rounds; jwcrypto >= 1.5 stops at 16384 unless told otherwise.
jwcrypto.jwa.default_max_pbkdf2_iterations = 1000000


def provisioner_key(ca):
    """The JWK provisioner's private key, decrypted from ca.json with the CA password (as `step ca token`)."""
    jwk = ca.provisioner("JWK")
    jwe = jwcrypto.jwe.JWE()
    password = getattr(ca, "password", None) or PASSWORD   # a restored CA keeps the password it was made with
    jwe.deserialize(jwk["encryptedKey"], key=jwcrypto.jwk.JWK.from_password(password))
    # 600000 rounds as setup writes them; a CA restored from an earlier version's backup keeps its own
    assert jwe.jose_header["cty"] == "jwk+json" and jwe.jose_header["p2c"] == getattr(ca, "jwe_rounds", 600000)
    key = jwcrypto.jwk.JWK.from_json(jwe.payload)
    assert key.thumbprint() == jwk["key"]["kid"]
    return key


def root_fingerprint(ca):
    cert = x509.load_pem_x509_certificate(ca.root.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex()


def one_time_token(key, issuer, subject, audience, header, **claims):
    """A JWT like `step ca token`: iss/sub/aud, five minutes of life, a jti, plus the given claims."""
    now = int(time.time())
    payload = {"iss": issuer, "sub": subject, "aud": audience, "nbf": now, "iat": now, "exp": now + 300,
               "jti": secrets.token_hex(16), **claims}
    token = jwcrypto.jwt.JWT(header=header, claims=payload)
    token.make_signed_token(key)
    return token.serialize()


def jwk_token(ca, subject, sans, path="/1.0/sign", **claims):
    jwk = ca.provisioner("JWK")
    header = {"alg": "ES256", "typ": "JWT", "kid": jwk["key"]["kid"]}
    return one_time_token(provisioner_key(ca), jwk["name"], subject, f"{ca.url}{path}", header,
                          sha=root_fingerprint(ca), sans=sans, **claims)


def post(ca, path, body):
    """(status, parsed JSON) of a POST to the CA, trusting only its root."""
    request = urllib.request.Request(f"{ca.url}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    context = ssl.create_default_context(cafile=str(ca.root))
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def csr_for(subject, sans):
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n) for n in sans]
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
           .add_extension(x509.SubjectAlternativeName(names), critical=False)
           .sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def sign(ca, subject, sans, **request):
    key, csr = csr_for(subject, sans)
    status, body = post(ca, "/1.0/sign", {"csr": csr, "ott": jwk_token(ca, subject, sans), **request})
    return status, body, key


def sans_of(cert):
    extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted([*extension.get_values_for_type(x509.DNSName),
                   *map(str, extension.get_values_for_type(x509.IPAddress))])


def test_jwk_token_gets_the_sans_asked_for_the_default_lifetime(running_ca, tmp_path):
    sans = ["svc.test.example", "10.0.0.5"]
    status, body, _ = sign(running_ca, "svc.test.example", sans)
    assert status == 201, body
    cert = x509.load_pem_x509_certificate(body["crt"].encode())
    assert sans_of(cert) == sorted(sans)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert abs(lifetime - datetime.timedelta(hours=744)) <= datetime.timedelta(minutes=2)
    (tmp_path / "leaf.pem").write_text(body["crt"])
    (tmp_path / "ca.pem").write_text(body["ca"])
    verified = openssl_verify(running_ca.root, tmp_path / "ca.pem", tmp_path / "leaf.pem")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_jwk_lifetime_over_the_max_is_refused(running_ca):
    status, body, _ = sign(running_ca, "svc.test.example", ["svc.test.example"], notAfter="8761h")
    assert status in (400, 401, 403), body
    status, body, _ = sign(running_ca, "svc.test.example", ["svc.test.example"], notAfter="8700h")
    assert status == 201, body


def test_jwk_token_with_the_wrong_password_key_is_refused(running_ca):
    stranger = jwcrypto.jwk.JWK.generate(kty="EC", crv="P-256")
    token = one_time_token(stranger, running_ca.provisioner("JWK")["name"], "svc.test.example",
                           f"{running_ca.url}/1.0/sign",
                           {"alg": "ES256", "typ": "JWT", "kid": running_ca.provisioner("JWK")["key"]["kid"]},
                           sans=["svc.test.example"])
    _, csr = csr_for("svc.test.example", ["svc.test.example"])
    status, _ = post(running_ca, "/1.0/sign", {"csr": csr, "ott": token})
    assert status == 401


def test_x5c_token_from_a_certificate_chained_to_the_root_is_refused(running_ca):
    """X5C never trusts the CA's own root (see test_x5c.py): a JWK-issued leaf gets no other name."""
    status, body, leaf_key = sign(running_ca, "client.test.example", ["client.test.example"])
    assert status == 201, body
    chain = [x509.load_pem_x509_certificate(pem.encode()) for pem in body["certChain"]]
    x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode() for cert in chain]
    signer = jwcrypto.jwk.JWK.from_pem(leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    name = "x5c"
    token = one_time_token(signer, name, "renewed.test.example", f"{running_ca.url}/1.0/sign#x5c/{name}",
                           {"alg": "ES256", "typ": "JWT", "x5c": x5c}, sans=["renewed.test.example"])
    _, csr = csr_for("renewed.test.example", ["renewed.test.example"])
    status, body = post(running_ca, "/1.0/sign", {"csr": csr, "ott": token})
    assert status in (400, 401, 403), body


def test_x5c_token_from_a_foreign_certificate_is_refused(running_ca, make_ca):
    other = make_ca()  # another CA, never served: its certificates do not chain to running_ca's root
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intruder")])
    foreign = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
               .sign(key, hashes.SHA256()))
    assert other.root.exists()
    signer = jwcrypto.jwk.JWK.from_pem(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    x5c = [base64.b64encode(foreign.public_bytes(serialization.Encoding.DER)).decode()]
    token = one_time_token(signer, "x5c", "intruder", f"{running_ca.url}/1.0/sign#x5c/x5c",
                           {"alg": "ES256", "typ": "JWT", "x5c": x5c}, sans=["intruder"])
    _, csr = csr_for("intruder", ["intruder"])
    status, _ = post(running_ca, "/1.0/sign", {"csr": csr, "ott": token})
    assert status == 401


def test_ssh_host_certificate_reads_back_with_ssh_keygen(running_ca, tmp_path):
    host_key = tmp_path / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    key_type, key_b64 = (tmp_path / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    principals = ["host.test.example"]
    token = jwk_token(running_ca, "host.test.example", principals, path="/1.0/ssh/sign",
                      step={"ssh": {"certType": "host", "keyID": "host.test.example", "principals": principals}})
    status, body = post(running_ca, "/1.0/ssh/sign", {"publicKey": key_b64, "ott": token, "certType": "host",
                                                      "keyID": "host.test.example", "principals": principals})
    assert status == 201, body
    blob = base64.b64decode(body["crt"])
    cert_type = blob[4:4 + int.from_bytes(blob[:4], "big")].decode()
    assert cert_type == f"{key_type}-cert-v01@openssh.com"
    cert_file = tmp_path / "ssh_host_ed25519_key-cert.pub"
    cert_file.write_text(f"{cert_type} {body['crt']}\n")
    listing = subprocess.run(["ssh-keygen", "-L", "-f", str(cert_file)], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    assert "host certificate" in listing.stdout
    assert "host.test.example" in listing.stdout
    fingerprint = subprocess.run(["ssh-keygen", "-l", "-f", str(running_ca.steppath / "certs/ssh_host_ca_key.pub")],
                                 capture_output=True, text=True, check=True).stdout.split()[1]
    assert fingerprint in listing.stdout  # signed by the appliance's SSH host CA


@pytest.fixture
def constrained_ca(make_ca, serve):
    ca = make_ca(name_constraints={"dns": ["localhost", "test.example"], "ip": ["127.0.0.0/8", "10.0.0.0/8"]})
    serve(ca)
    return ca


def test_a_name_outside_the_name_constraints_fails(constrained_ca, tmp_path):
    (tmp_path / "ca.pem").write_bytes(constrained_ca.intermediate.read_bytes())
    status, body, _ = sign(constrained_ca, "svc.test.example", ["svc.test.example", "10.1.2.3"])
    assert status == 201, body
    (tmp_path / "inside.pem").write_text(body["crt"])
    inside = openssl_verify(constrained_ca.root, tmp_path / "ca.pem", tmp_path / "inside.pem")
    assert inside.returncode == 0, inside.stdout + inside.stderr
    # step-ca 0.19 signs what the JWK token allows; the intermediate's name constraints make every
    # relying party (openssl here, browsers, Go, OpenSSL-based clients) reject the result.
    status, body, _ = sign(constrained_ca, "svc.other.example", ["svc.other.example"])
    if status == 201:
        (tmp_path / "outside.pem").write_text(body["crt"])
        outside = openssl_verify(constrained_ca.root, tmp_path / "ca.pem", tmp_path / "outside.pem")
        assert outside.returncode != 0
        assert "permitted subtree violation" in outside.stdout + outside.stderr
    else:  # step-ca >= 0.20 enforces the constraints itself
        assert status in (400, 401, 403), body
