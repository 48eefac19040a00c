"""The appliance from the network (the host, through the forwarded ports): root, ACME, JWK."""
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from vm_helpers import CHALLENGE_NAME, certbot_certonly, openssl_verify


def test_the_served_root_matches_the_fingerprint_status_prints(root_pem, status_fingerprint):
    root = x509.load_pem_x509_certificate(root_pem.read_bytes())
    assert root.fingerprint(hashes.SHA256()).hex() == status_fingerprint


def test_certbot_gets_a_certificate_over_http01_that_chains_to_the_root(certbot, target, root_pem):
    result = certbot_certonly(certbot, target, CHALLENGE_NAME)
    assert result.returncode == 0, result.stdout + result.stderr
    live = certbot.config_dir / "live" / CHALLENGE_NAME
    leaf = x509.load_pem_x509_certificate((live / "cert.pem").read_bytes())
    assert CHALLENGE_NAME in leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.DNSName)
    verified = openssl_verify(root_pem, live / "chain.pem", live / "cert.pem")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_the_jwk_provisioner_issues_a_certificate_that_chains_to_the_root(jwk, target, root_pem):
    issued = jwk.issue("svc.verify.test", ["svc.verify.test"])
    work = target.vm.workdir
    (work / "jwk-leaf.pem").write_bytes(issued.certificate)
    (work / "jwk-chain.pem").write_bytes(issued.chain)
    verified = openssl_verify(root_pem, work / "jwk-chain.pem", work / "jwk-leaf.pem")
    assert verified.returncode == 0, verified.stdout + verified.stderr
