"""What 0.30 makes possible, run for real against the pinned step-ca and step CLI on loopback:
the `step` flows the README and the client page tell people to use (bootstrap, a JWK certificate,
renew, revoke, SSH certificates), revocation that `openssl verify -crl_check` sees in the CRL at
the URL every leaf names, and name constraints that step-ca itself enforces at issuance."""
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from ca_helpers import PASSWORD
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

VENV_BIN = Path(sys.executable).parent


class StepCLI:
    """The real `step` with its own STEPPATH, bootstrapped to a CA as a user would."""

    def __init__(self, binary, home):
        self.binary, self.home = binary, Path(home)
        self.password_file = self.home / "provisioner-password"
        self.home.mkdir(parents=True, exist_ok=True)
        self.password_file.write_text(PASSWORD)

    def __call__(self, *args, check=True):
        env = {"STEPPATH": str(self.home / "step"), "HOME": str(self.home), "PATH": os.environ["PATH"]}
        result = subprocess.run([str(self.binary), *map(str, args)], capture_output=True, text=True,
                                env=env, timeout=120, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"step {' '.join(map(str, args))} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def bootstrap(self, ca):
        fingerprint = self("certificate", "fingerprint", ca.root).stdout.strip()
        self("ca", "bootstrap", "--ca-url", ca.url, "--fingerprint", fingerprint)
        return fingerprint

    def jwk_certificate(self, ca, name, crt, key, *extra, check=True):
        return self("ca", "certificate", name, crt, key, "--provisioner", ca.answers["ca"]["provisioner"],
                    "--provisioner-password-file", self.password_file, *extra, check=check)


@pytest.fixture
def step(step_cli_binary, tmp_path):
    return StepCLI(step_cli_binary, tmp_path / "client")


def fetch_crl(ca, into):
    """The CRL as a relying party fetches it (DER from /crl, here on step-ca's own port), as PEM."""
    with urllib.request.urlopen(f"{ca.url}/crl", context=ca.ssl_context(), timeout=10) as response:
        der = response.read()
    crl = x509.load_der_x509_crl(der)
    into.write_bytes(crl.public_bytes(Encoding.PEM))
    return crl


def crl_check(ca, leaf, crl_pem):
    """openssl verify with the CRL (leaf only: the intermediate's status is the root's to publish)."""
    return subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", str(ca.root), "-untrusted",
                           str(ca.intermediate), "-CRLfile", str(crl_pem), str(leaf)], capture_output=True, text=True)


def crl_distribution_points(pem_path):
    cert = x509.load_pem_x509_certificate(Path(pem_path).read_bytes())
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    return [name.value for point in points for name in point.full_name]


def test_step_cli_bootstrap_jwk_certificate_renew_and_revoke_with_the_crl(running_ca, step, tmp_path):
    """The README's `step` flow; the certificate comes from the appliance's own JWE of the provisioner key."""
    fingerprint = step.bootstrap(running_ca)
    assert json.loads((tmp_path / "client/step/config/defaults.json").read_text())["fingerprint"] == fingerprint
    good, bad = tmp_path / "good.crt", tmp_path / "bad.crt"
    step.jwk_certificate(running_ca, "localhost", good, tmp_path / "good.key")
    step.jwk_certificate(running_ca, "127.0.0.1", bad, tmp_path / "bad.key")
    assert crl_distribution_points(good) == ["http://localhost/crl"]   # the page's plain-HTTP port 80

    before = x509.load_pem_x509_certificate(good.read_bytes()).serial_number
    step("ca", "renew", "--force", good, tmp_path / "good.key")
    assert x509.load_pem_x509_certificate(good.read_bytes()).serial_number != before

    step("ca", "revoke", "--cert", bad, "--key", tmp_path / "bad.key")
    crl = fetch_crl(running_ca, tmp_path / "crl.pem")
    revoked = x509.load_pem_x509_certificate(bad.read_bytes()).serial_number
    assert crl.get_revoked_certificate_by_serial_number(revoked) is not None   # regenerated on revocation
    assert crl.next_update_utc > crl.last_update_utc

    refused = crl_check(running_ca, bad, tmp_path / "crl.pem")
    assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr
    accepted = crl_check(running_ca, good, tmp_path / "crl.pem")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    # and a revoked certificate can no longer renew itself
    assert step("ca", "renew", "--force", bad, tmp_path / "bad.key", check=False).returncode != 0


def test_certbot_revoke_lands_in_the_crl(running_ca, tmp_path, port_80_free):
    from test_ca_acme import NAME, certbot, certbot_certonly

    issued = certbot_certonly(running_ca, tmp_path)
    assert issued.returncode == 0, issued.stdout + issued.stderr
    live = tmp_path / "config/live" / NAME
    assert crl_distribution_points(live / "cert.pem") == [f"http://{NAME}/crl"]
    fetch_crl(running_ca, tmp_path / "before.pem")
    assert crl_check(running_ca, live / "cert.pem", tmp_path / "before.pem").returncode == 0

    revoked = certbot(running_ca, tmp_path, "revoke", "--cert-path", live / "cert.pem", "--no-delete-after-revoke",
                      "--reason", "keycompromise")
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    fetch_crl(running_ca, tmp_path / "after.pem")
    refused = crl_check(running_ca, live / "cert.pem", tmp_path / "after.pem")
    assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr


def test_ssh_user_and_host_certificates_from_the_step_cli(running_ca, step, tmp_path):
    step.bootstrap(running_ca)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / "id"], check=True)
    step("ssh", "certificate", "alice", tmp_path / "id.pub", "--sign", "--principal", "alice",
         "--provisioner", running_ca.answers["ca"]["provisioner"], "--provisioner-password-file",
         step.password_file, "--no-agent")
    shown = subprocess.run(["ssh-keygen", "-L", "-f", tmp_path / "id-cert.pub"], capture_output=True, text=True)
    assert "user certificate" in shown.stdout and "alice" in shown.stdout
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / "host"], check=True)
    step("ssh", "certificate", "localhost", tmp_path / "host.pub", "--host", "--sign",
         "--provisioner", running_ca.answers["ca"]["provisioner"], "--provisioner-password-file",
         step.password_file)
    shown = subprocess.run(["ssh-keygen", "-L", "-f", tmp_path / "host-cert.pub"], capture_output=True, text=True)
    assert "host certificate" in shown.stdout and "localhost" in shown.stdout


def test_x5c_flow_with_the_step_cli(make_ca, serve, step, tmp_path):
    """An operator's other CA (made by `step certificate create`) authorises X5C tokens."""
    other = tmp_path / "other"
    other.mkdir()
    step("certificate", "create", "Other Root", other / "root.crt", other / "root.key", "--profile", "root-ca",
         "--no-password", "--insecure")
    step("certificate", "create", "client.other", other / "client.crt", other / "client.key", "--profile", "leaf",
         "--ca", other / "root.crt", "--ca-key", other / "root.key", "--no-password", "--insecure")
    ca = make_ca(x5c_roots=(other / "root.crt").read_text())
    serve(ca)
    step.bootstrap(ca)
    step("ca", "certificate", "localhost", tmp_path / "x5c.crt", tmp_path / "x5c.key", "--provisioner", "x5c",
         "--x5c-cert", other / "client.crt", "--x5c-key", other / "client.key")
    assert x509.load_pem_x509_certificate((tmp_path / "x5c.crt").read_bytes()).subject.rfc4514_string() \
        == "CN=localhost"


def test_name_constraints_are_step_cas_policy_for_jwk_tokens(make_ca, serve, step, tmp_path):
    ca = make_ca(name_constraints={"dns": ["localhost"], "ip": ["127.0.0.0/8"]})
    assert ca.config["authority"]["policy"]["x509"]["allow"]["dns"] == ["localhost", "*.localhost"]
    serve(ca)
    step.bootstrap(ca)
    step.jwk_certificate(ca, "www.localhost", tmp_path / "in.crt", tmp_path / "in.key")
    step.jwk_certificate(ca, "127.0.0.9", tmp_path / "ip.crt", tmp_path / "ip.key")
    for outside in ("www.example.org", "10.1.2.3"):
        refused = step.jwk_certificate(ca, outside, tmp_path / "out.crt", tmp_path / "out.key", check=False)
        assert refused.returncode != 0
        assert f'"{outside}" is not permitted' in refused.stderr   # step-ca's policy, not the relying party
        assert not (tmp_path / "out.crt").exists()


def test_ip_only_constraints_leave_dns_names_open_and_refuse_other_ips(make_ca, serve, step, tmp_path):
    ca = make_ca(name_constraints={"dns": [], "ip": ["127.0.0.0/8"]})
    serve(ca)
    step.bootstrap(ca)
    step.jwk_certificate(ca, "anything.example", tmp_path / "dns.crt", tmp_path / "dns.key")
    refused = step.jwk_certificate(ca, "192.0.2.1", tmp_path / "out.crt", tmp_path / "out.key", check=False)
    assert refused.returncode != 0 and '"192.0.2.1" is not permitted' in refused.stderr


def test_an_acme_order_outside_the_constraints_is_refused_by_step_ca(make_ca, serve, tmp_path, port_80_free):
    from test_ca_acme import certbot

    ca = make_ca(name_constraints={"dns": ["localhost"], "ip": ["127.0.0.0/8"]})
    serve(ca)
    refused = certbot(ca, tmp_path, "certonly", "--standalone", "-d", "outside.example", "--agree-tos",
                      "--register-unsafely-without-email", "--http-01-address", "127.0.0.1", "--http-01-port", "80")
    assert refused.returncode != 0
    said = (tmp_path / "logs/letsencrypt.log").read_text()
    assert "urn:ietf:params:acme:error:rejectedIdentifier" in said   # refused at new-order, before any challenge
    assert not (tmp_path / "config/live/outside.example").exists()
    inside = certbot(ca, tmp_path, "certonly", "--standalone", "-d", "localhost", "--agree-tos",
                     "--register-unsafely-without-email", "--http-01-address", "127.0.0.1", "--http-01-port", "80")
    assert inside.returncode == 0, inside.stdout + inside.stderr


def test_status_json_reports_the_crls_age_and_next_update(running_ca, step, tmp_path):
    from ca_helpers import run_cli

    step.bootstrap(running_ca)
    step.jwk_certificate(running_ca, "localhost", tmp_path / "r.crt", tmp_path / "r.key")
    step("ca", "revoke", "--cert", tmp_path / "r.crt", "--key", tmp_path / "r.key")
    facts = json.loads(run_cli("status", "--json", "--health", "--prefix", running_ca.prefix).stdout)
    assert facts["crl_url"] == "http://localhost/crl"
    crl = facts["crl"]
    assert crl["revoked"] == 1 and 0 <= crl["age_seconds"] < 300
    assert crl["next_update"] > crl["last_update"]


def test_the_watch_levels_for_a_fresh_a_stale_and_an_expired_crl(running_ca, tmp_path):
    """The watch's verdict on the real CRL step-ca serves, seen at three moments of its life."""
    import datetime

    from ca_appliance import pki, stepca, watch

    crl, problem = stepca.crl(running_ca.config, running_ca.root)
    assert problem is None
    last, following = pki.crl_updates(crl)
    assert watch.crl_findings(crl, None, now=last + datetime.timedelta(minutes=1)) == []
    stale = watch.crl_findings(crl, None, now=last + (following - last) * 0.9)
    assert [f.level for f in stale] == [watch.WARNING] and "stale" in stale[0].message
    expired = watch.crl_findings(crl, None, now=following + datetime.timedelta(seconds=1))
    assert [f.level for f in expired] == [watch.CRITICAL]
    unreadable = watch.crl_findings(None, "GET /crl answered 500")
    assert [f.level for f in unreadable] == [watch.WARNING]


def crl_check_all(ca, leaf, *crl_pems):
    """The whole chain checked against CRLs: the leaf against step-ca's, the intermediate against the root's."""
    crls = [arg for pem in crl_pems for arg in ("-CRLfile", str(pem))]
    return subprocess.run(["openssl", "verify", "-crl_check_all", "-CAfile", str(ca.root), "-untrusted",
                           str(ca.intermediate), *crls, str(leaf)], capture_output=True, text=True)


def root_crl_pem(ca, into):
    der = (ca.steppath / "certs/root_ca.crl").read_bytes()
    into.write_bytes(x509.load_der_x509_crl(der).public_bytes(Encoding.PEM))
    return into


def test_the_intermediate_names_the_roots_crl_and_the_whole_chain_checks(running_ca, step, tmp_path):
    """Every issued certificate, the intermediate included, names where its status is published:
    the leaves step-ca's CRL, the intermediate the root's (signed by the root, served by the page)."""
    intermediate = x509.load_pem_x509_certificate(running_ca.intermediate.read_bytes())
    points = intermediate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [n.value for p in points for n in p.full_name] == ["http://localhost/root.crl"]
    root_crl = x509.load_der_x509_crl((running_ca.steppath / "certs/root_ca.crl").read_bytes())
    root = x509.load_pem_x509_certificate(running_ca.root.read_bytes())
    assert root_crl.issuer == root.subject and root_crl.is_signature_valid(root.public_key())
    assert len(root_crl) == 0 and root_crl.next_update_utc >= intermediate.not_valid_after_utc

    step.bootstrap(running_ca)
    step.jwk_certificate(running_ca, "localhost", tmp_path / "good.crt", tmp_path / "good.key")
    step.jwk_certificate(running_ca, "127.0.0.1", tmp_path / "bad.crt", tmp_path / "bad.key")
    step("ca", "revoke", "--cert", tmp_path / "bad.crt", "--key", tmp_path / "bad.key")
    fetch_crl(running_ca, tmp_path / "leaves.pem")
    root_crl_pem(running_ca, tmp_path / "root.pem")
    accepted = crl_check_all(running_ca, tmp_path / "good.crt", tmp_path / "leaves.pem", tmp_path / "root.pem")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    refused = crl_check_all(running_ca, tmp_path / "bad.crt", tmp_path / "leaves.pem", tmp_path / "root.pem")
    assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr
    # without the root's CRL the intermediate's status is unknown: the check refuses, so it is needed
    unknown = crl_check_all(running_ca, tmp_path / "good.crt", tmp_path / "leaves.pem")
    assert unknown.returncode != 0 and "unable to get certificate CRL" in unknown.stdout + unknown.stderr


def test_a_renewed_intermediate_keeps_naming_the_roots_crl_which_covers_it(make_ca, tmp_path):
    from ca_helpers import run_cli

    ca = make_ca()
    run_cli("renew-intermediate", "--prefix", ca.prefix, "--no-system")
    renewed = x509.load_pem_x509_certificate(ca.intermediate.read_bytes())
    assert renewed.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    root_crl = x509.load_der_x509_crl((ca.steppath / "certs/root_ca.crl").read_bytes())
    assert root_crl.next_update_utc >= renewed.not_valid_after_utc
    page = ca.prefix / "var/lib/ca-appliance/page/root.crl"
    assert page.read_bytes() == (ca.steppath / "certs/root_ca.crl").read_bytes()   # the page serves the new one
