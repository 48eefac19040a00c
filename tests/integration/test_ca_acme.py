"""ACME clients against the appliance's CA, as the seed article uses it: certbot --standalone with
REQUESTS_CA_BUNDLE set to the root, and acme-tiny; both over http-01 on 127.0.0.1:80."""
import datetime
import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from ca_helpers import openssl_verify
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

VENV_BIN = Path(sys.executable).parent
# Resolves to 127.0.0.1 on every machine (/etc/hosts), needs no DNS, and step-ca 0.19 takes it.
NAME = "localhost"
ACME_DEFAULT = datetime.timedelta(hours=744)


def lifetime(cert):
    return cert.not_valid_after_utc - cert.not_valid_before_utc


def certbot(ca, workdir, *args):
    env = dict(os.environ, REQUESTS_CA_BUNDLE=str(ca.root))
    dirs = ["--config-dir", workdir / "config", "--work-dir", workdir / "work", "--logs-dir", workdir / "logs"]
    return subprocess.run([str(VENV_BIN / "certbot"), *args, "-n", *map(str, dirs),
                           "--server", f"{ca.url}/acme/acme/directory"],
                          capture_output=True, text=True, env=env, timeout=300)


def certbot_certonly(ca, workdir):
    return certbot(ca, workdir, "certonly", "--standalone", "-d", NAME, "--agree-tos",
                   "--register-unsafely-without-email", "--http-01-address", "127.0.0.1", "--http-01-port", "80")


def test_certbot_standalone_gets_a_certificate_that_chains_to_the_root(running_ca, tmp_path, port_80_free):
    result = certbot_certonly(running_ca, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    live = tmp_path / "config/live" / NAME
    cert = x509.load_pem_x509_certificate((live / "cert.pem").read_bytes())
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == [NAME]
    assert abs(lifetime(cert) - ACME_DEFAULT) <= datetime.timedelta(minutes=2)  # the acme claim, not step's 24h
    verified = openssl_verify(running_ca.root, live / "chain.pem", live / "cert.pem")
    assert verified.returncode == 0, verified.stdout + verified.stderr


class _ChallengeHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def challenge_server(tmp_path, port_80_free):
    """Serves DIR at http://127.0.0.1/.well-known/acme-challenge/ (acme-tiny only writes the files)."""
    webroot = tmp_path / "webroot"
    challenges = webroot / ".well-known/acme-challenge"
    challenges.mkdir(parents=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 80),
                                             functools.partial(_ChallengeHandler, directory=str(webroot)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield challenges
    server.shutdown()
    server.server_close()
    thread.join()


def test_acme_tiny_gets_a_certificate_that_chains_to_the_root(running_ca, tmp_path, challenge_server):
    account_key, domain_key, csr = tmp_path / "account.key", tmp_path / "domain.key", tmp_path / "domain.csr"
    subprocess.run(["openssl", "genrsa", "-out", str(account_key), "2048"], check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(domain_key),
                    "-subj", f"/CN={NAME}", "-addext", f"subjectAltName=DNS:{NAME}", "-out", str(csr)],
                   check=True, capture_output=True)
    env = dict(os.environ, SSL_CERT_FILE=str(running_ca.root))  # acme-tiny uses urllib's default context
    result = subprocess.run(
        [str(VENV_BIN / "acme-tiny"), "--account-key", str(account_key), "--csr", str(csr),
         "--acme-dir", str(challenge_server), "--directory-url", f"{running_ca.url}/acme/acme/directory",
         "--disable-check"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    fullchain = tmp_path / "fullchain.pem"
    fullchain.write_text(result.stdout)
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(x509.load_pem_x509_certificate(fullchain.read_bytes()).public_bytes(Encoding.PEM))
    verified = openssl_verify(running_ca.root, fullchain, leaf)
    assert verified.returncode == 0, verified.stdout + verified.stderr
