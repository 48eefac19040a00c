"""The X5C provisioner against a real step-ca: who may sign a token, and for which names.

The attack (issue 11, item 1): a certificate obtained over ACME for one name is used to sign an
X5C token asking for an unrelated name. With X5C trusting the CA's own root, step-ca signs it;
the appliance must refuse. X5C trusts only the roots an operator supplies (`ca.x5c_roots`).
"""
import base64
import datetime
from pathlib import Path

import jwcrypto.jwk
import pytest
from ca_helpers import CA, answers_for, free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from test_ca_acme import NAME, certbot_certonly
from test_ca_provisioners import csr_for, one_time_token, post, sans_of

VICTIM = "victim.unrelated.example"


def x5c_sign(ca, chain_pems, key, name):
    """POST /1.0/sign with an X5C token for `name`, signed by `key`, carrying `chain_pems`."""
    x5c = [base64.b64encode(x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)).decode()
           for pem in chain_pems]
    signer = jwcrypto.jwk.JWK.from_pem(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    token = one_time_token(signer, "x5c", name, f"{ca.url}/1.0/sign#x5c/x5c",
                           {"alg": "ES256", "typ": "JWT", "x5c": x5c}, sans=[name])
    _, csr = csr_for(name, [name])
    return post(ca, "/1.0/sign", {"csr": csr, "ott": token})


def split_pems(data):
    marker = b"-----END CERTIFICATE-----"
    return [part.strip() + b"\n" + marker + b"\n" for part in data.split(marker) if part.strip()]


class ForeignCA:
    """Another organisation's CA (made here): a root and the client certificates it signs."""

    def __init__(self):
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Operator Workload Root")])
        now = datetime.datetime.now(datetime.UTC)
        self.name = name
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                    critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def client(self, name):
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                               critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(self.key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM), key


@pytest.fixture(scope="module")
def foreign_ca():
    return ForeignCA()


@pytest.fixture
def acme_leaf(tmp_path, port_80_free):
    """issue(ca) -> (chain PEMs, key) of a certificate for NAME got over ACME http-01 by certbot."""

    def issue(ca):
        workdir = tmp_path / f"certbot-{ca.port}"
        result = certbot_certonly(ca, workdir)
        assert result.returncode == 0, result.stdout + result.stderr
        live = workdir / "config/live" / NAME
        key = serialization.load_pem_private_key((live / "privkey.pem").read_bytes(), password=None)
        return split_pems((live / "fullchain.pem").read_bytes()), key

    return issue


def test_an_acme_leaf_cannot_mint_a_certificate_for_another_name(make_ca, serve, acme_leaf):
    ca = make_ca()  # the default: no operator roots
    serve(ca)
    chain, key = acme_leaf(ca)
    status, body = x5c_sign(ca, chain, key, VICTIM)
    assert status in (400, 401, 403, 404), (status, body)
    assert "crt" not in body


def test_with_operator_roots_an_acme_leaf_is_still_refused_and_theirs_works(make_ca, serve, acme_leaf,
                                                                           foreign_ca):
    ca = make_ca(x5c_roots=foreign_ca.pem.decode())
    serve(ca)
    assert [p["type"] for p in ca.config["authority"]["provisioners"]].count("X5C") == 1
    chain, key = acme_leaf(ca)
    status, body = x5c_sign(ca, chain, key, VICTIM)
    assert status in (400, 401, 403), (status, body)

    leaf_pem, leaf_key = foreign_ca.client("workload.test.example")
    status, body = x5c_sign(ca, [leaf_pem], leaf_key, "workload.test.example")
    assert status == 201, body
    assert sans_of(x509.load_pem_x509_certificate(body["crt"].encode())) == ["workload.test.example"]


def test_x5c_roots_must_be_ca_certificates(tmp_path, foreign_ca):
    leaf_pem, _ = foreign_ca.client("workload.test.example")
    for bad, words in ((leaf_pem.decode(), "not a CA certificate"), ("-----BEGIN CERTIFICATE-----\nAAAA\n", "PEM")):
        port = free_port()
        ca = CA(tmp_path / f"ca{port}", port, answers_for(port, x5c_roots=bad))
        result = ca.setup(check=False)
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "ca.x5c_roots" in lines[0] and words in lines[0], result.stderr
        assert not ca.ca_json.exists()


def _refused_setup(ca, *extra):
    result = ca.setup(*extra, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("answers error: ca.x5c_roots: <PEM, "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


PUBLIC_BUNDLE = next((path for path in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
                      if Path(path).is_file()), None)


@pytest.mark.skipif(PUBLIC_BUNDLE is None, reason="no system trust bundle (Debian: the ca-certificates package)")
def test_a_root_of_the_systems_public_trust_bundle_is_refused(tmp_path):
    # Before: any CA:TRUE certificate was accepted, the 140-odd public roots of the bundle included.
    from ca_appliance import x5c
    public = x5c.pem_blocks(Path(PUBLIC_BUNDLE).read_bytes())
    assert len(public) > 50
    for block in (public[0], public[len(public) // 2]):
        port = free_port()
        ca = CA(tmp_path / f"ca{port}", port, answers_for(port, x5c_roots=block.decode() + "\n"))
        line = _refused_setup(ca)
        assert "is in the system's public trust bundle" in line and "SHA-256 " in line
        assert not ca.prefix.exists() or not ca.ca_json.exists()


def test_this_cas_own_root_or_intermediate_is_refused_when_setup_replaces_it(tmp_path, foreign_ca):
    # Before: an X5C provisioner trusting the CA's own chain let any ACME or JWK leaf mint any name.
    port = free_port()
    ca = CA(tmp_path / "ca", port, answers_for(port))
    ca.setup()
    before = ca.ca_json.read_bytes()
    for own in (ca.root, ca.intermediate):
        ca.answers = answers_for(port, x5c_roots=foreign_ca.pem.decode() + own.read_text())
        line = _refused_setup(ca, "--force")
        assert "certificate 2 (" in line and "this CA's own root or intermediate" in line
        assert ca.ca_json.read_bytes() == before


def test_the_own_chain_check_matches_by_key_too(foreign_ca):
    """A certificate re-issued for the same key (what restore and renew may meet) is the same trust."""
    from ca_appliance import x5c
    now = datetime.datetime.now(datetime.UTC)
    reissued = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Other")]))
                .issuer_name(foreign_ca.name).public_key(foreign_ca.key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(foreign_ca.key, hashes.SHA256())).public_bytes(serialization.Encoding.PEM)
    assert "own root or intermediate" in x5c.own_chain_problem(reissued, [foreign_ca.pem])
    assert x5c.own_chain_problem(reissued, []) is None
