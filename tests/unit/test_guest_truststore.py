"""The first boot's quick path into Debian's trust store: OpenSSL must then trust the appliance's
root both through the bundle and through the hashed directory, as after update-ca-certificates."""
import datetime
import os
import shutil
import subprocess

import pytest
from ca_appliance import truststore
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _cert(subject, key, issuer=None, issuer_key=None, ca=True):
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer or name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    return builder.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture
def store(tmp_path):
    certs = tmp_path / "etc/ssl/certs"
    certs.mkdir(parents=True)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _cert("Some Public Root", other_key).public_bytes(serialization.Encoding.PEM).decode()
    (certs / "ca-certificates.crt").write_text(other)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert("Lab Root CA", root_key)
    anchor = tmp_path / "usr/local/share/ca-certificates/ca-appliance-root.crt"
    anchor.parent.mkdir(parents=True)
    anchor.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    leaf = _cert("web.lab.example", ec.generate_private_key(ec.SECP256R1()), root.subject, root_key, ca=False)
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return tmp_path, certs, anchor, other


def _verify(tmp_path, *trust):
    return subprocess.run(["openssl", "verify", *trust, str(tmp_path / "leaf.pem")],
                          capture_output=True, text=True).returncode == 0


def test_openssl_trusts_the_root_through_bundle_and_hash_links_after_the_quick_add(store):
    tmp_path, certs, anchor, other = store
    bundle = certs / "ca-certificates.crt"
    assert not _verify(tmp_path, "-CAfile", str(bundle))
    assert truststore.add_new_anchor(anchor, certs, tmp_path / "no-hooks")
    assert _verify(tmp_path, "-CAfile", str(bundle))
    assert _verify(tmp_path, "-no-CAfile", "-CApath", str(certs))
    assert os.readlink(certs / "ca-appliance-root.pem") == str(anchor)
    assert bundle.read_text().startswith(other) and oct(bundle.stat().st_mode & 0o777) == "0o644"
    before = bundle.read_text()
    assert truststore.add_new_anchor(anchor, certs, tmp_path / "no-hooks")   # idempotent
    assert bundle.read_text() == before
    assert len(list(certs.glob(f"{truststore.subject_hash(anchor)}.*"))) == 1


def test_a_taken_hash_slot_gets_the_next_index(store):
    tmp_path, certs, anchor, _ = store
    digest = truststore.subject_hash(anchor)
    os.symlink("someone-else.pem", certs / f"{digest}.0")
    assert truststore.add_new_anchor(anchor, certs, tmp_path / "no-hooks")
    assert os.readlink(certs / f"{digest}.1") == "ca-appliance-root.pem"


def test_hooks_or_a_missing_bundle_leave_it_to_the_full_tool(store):
    tmp_path, certs, anchor, _ = store
    hooks = tmp_path / "update.d"
    hooks.mkdir()
    (hooks / "jks-keystore").write_text("#!/bin/sh\n")
    os.chmod(hooks / "jks-keystore", 0o755)
    before = sorted(p.name for p in certs.iterdir())
    assert truststore.add_new_anchor(anchor, certs, hooks) is False
    assert sorted(p.name for p in certs.iterdir()) == before
    (certs / "ca-certificates.crt").unlink()
    assert truststore.add_new_anchor(anchor, certs, tmp_path / "no-hooks") is False
