"""A CA that lives for years, against a real step-ca: intermediate renewal with a reload, the
expiry and health watch, `status --json` and its Nagios exit codes, and revocation (ACME
revokeCert and the JWK provisioner's POST /revoke; a revoked certificate cannot be renewed)."""
import json
import os
import signal
import ssl
import time
import urllib.error
import urllib.request

import yaml
from ca_helpers import openssl_verify, run_cli, run_cli_on_terminal
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from test_ca_acme import NAME, certbot, certbot_certonly
from test_ca_provisioners import jwk_token, one_time_token, post, provisioner_key, root_fingerprint, sign


def _served_intermediate(ca, deadline_s=30):
    """The intermediate step-ca serves now: the issuer of the chain /1.0/sign returns."""
    status, body, _ = sign(ca, "probe.test.example", ["probe.test.example"])
    assert status == 201, body
    return x509.load_pem_x509_certificate(body["ca"].encode())


def _issue_and_verify(ca, tmp_path, name):
    status, body, key = sign(ca, f"{name}.test.example", [f"{name}.test.example"])
    assert status == 201, body
    (tmp_path / f"{name}.pem").write_text(body["crt"])
    (tmp_path / f"{name}-chain.pem").write_text(body["ca"])
    verified = openssl_verify(ca.root, tmp_path / f"{name}-chain.pem", tmp_path / f"{name}.pem")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    return body, key


def test_renew_intermediate_then_reload_keeps_old_and_new_chains_valid(make_ca, serve, tmp_path):
    ca = make_ca()
    server = serve(ca)
    root_before = ca.root.read_bytes()
    old_intermediate = x509.load_pem_x509_certificate(ca.intermediate.read_bytes())
    _issue_and_verify(ca, tmp_path, "before")

    result = run_cli("renew-intermediate", "--prefix", ca.prefix, "--no-system")
    assert "New intermediate in place" in result.stdout
    assert ca.root.read_bytes() == root_before
    new_intermediate = x509.load_pem_x509_certificate(ca.intermediate.read_bytes())
    assert new_intermediate.serial_number != old_intermediate.serial_number
    assert new_intermediate.public_key().public_numbers() != old_intermediate.public_key().public_numbers()
    assert new_intermediate.subject == old_intermediate.subject
    assert (ca.steppath / "secrets/intermediate_ca_key").stat().st_mode & 0o777 == 0o600
    assert (ca.steppath / "secrets/intermediate_ca_key.previous").exists()
    assert not list(ca.prefix.glob("etc/.step-ca.*")), "staging leftovers"

    os.killpg(server.process.pid, signal.SIGHUP)  # what `systemctl reload step-ca` sends
    deadline = time.monotonic() + 30
    while _served_intermediate(ca).serial_number != new_intermediate.serial_number:
        assert time.monotonic() < deadline, "step-ca still serves the old intermediate after SIGHUP"
        time.sleep(0.5)
    _issue_and_verify(ca, tmp_path, "after")
    # the certificate issued before the renewal still verifies with its own chain, same root
    before = openssl_verify(ca.root, tmp_path / "before-chain.pem", tmp_path / "before.pem")
    assert before.returncode == 0, before.stdout + before.stderr
    # and the new one does not chain through the old intermediate: it really was re-issued
    crossed = openssl_verify(ca.root, tmp_path / "before-chain.pem", tmp_path / "after.pem")
    assert crossed.returncode != 0


def test_renew_intermediate_with_an_offline_root_key(make_ca, serve, tmp_path):
    key_file = tmp_path / "root_ca_key"
    ca = make_ca()
    # an offline root key's passphrase is shown on a console only: set up the way a person would
    ca.answers["ca"]["root_key"] = "offline"
    answers_file = tmp_path / "offline-answers.yaml"
    answers_file.write_text(yaml.safe_dump(ca.answers))
    status, shown, stderr = run_cli_on_terminal("setup", "--force", "--answers", answers_file, "--prefix",
                                                ca.prefix, "--no-system", "--root-key-out", key_file)
    assert status == 0, shown + stderr
    root_passphrase = shown.split("shown once): ", 1)[1].split()[0]
    assert not (ca.steppath / "secrets/root_ca_key").exists()
    missing = run_cli("renew-intermediate", "--prefix", ca.prefix, "--no-system", check=False)
    assert missing.returncode == 2 and "--root-key" in missing.stderr
    before = ca.intermediate.read_bytes()
    wrong = run_cli("renew-intermediate", "--prefix", ca.prefix, "--no-system", "--root-key", key_file,
                    input_text="not-the-passphrase\n", check=False)
    assert wrong.returncode == 2 and "passphrase" in wrong.stderr
    assert "not-the-passphrase" not in wrong.stderr + wrong.stdout
    assert ca.intermediate.read_bytes() == before
    # the passphrase comes on stdin (or the terminal), never on the command line
    run_cli("renew-intermediate", "--prefix", ca.prefix, "--no-system", "--root-key", key_file,
            input_text=root_passphrase + "\n")
    assert ca.intermediate.read_bytes() != before
    serve(ca)
    _issue_and_verify(ca, tmp_path, "offline-root")


def _status(ca, *extra):
    result = run_cli("status", "--json", "--prefix", ca.prefix, *extra, check=False)
    return result.returncode, json.loads(result.stdout)


def test_status_json_and_nagios_exit_codes(make_ca, serve):
    ca = make_ca()
    code, facts = _status(ca)
    assert code == 0 and facts["state"] == "ok", facts
    assert facts["health"] == "not checked"
    assert facts["root_fingerprint"] == root_fingerprint(ca)
    assert facts["acme_directory"] == f"{ca.url}/acme/acme/directory"
    assert facts["intermediate"]["days_left"] in (5 * 365 - 1, 5 * 365)
    assert facts["root"]["days_left"] in (10 * 365 - 1, 10 * 365)
    assert {"name": "acme", "type": "ACME"} in facts["provisioners"]
    assert facts["test_image"] is False
    assert "step_ca_version" in facts

    code, facts = _status(ca, "--health")  # nothing serves it yet
    assert code == 2 and facts["state"] == "critical", facts
    assert "not healthy" in facts["findings"][0]["message"]

    serve(ca)
    code, facts = _status(ca, "--health")
    assert code == 0 and facts["health"] == "ok", facts

    text = run_cli("status", "--prefix", ca.prefix, "--health").stdout
    assert "state:" in text and "OK" in text and "root expires:" in text


def test_watch_warns_near_expiry_in_the_journal_and_on_the_banner(make_ca, serve, tmp_path):
    ca = make_ca(intermediate_years=1)
    serve(ca)
    # an intermediate with 30 days left: made by the CLI's own renewal, run 335 days "in the past"
    import subprocess

    from ca_helpers import CA_APPLIANCE, GUEST_PYTHON
    script = (
        "import datetime\n"
        "from ca_appliance import renew\nfrom ca_appliance.layout import Layout\n"
        "now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=335)\n"
        f"renew.renew_intermediate(Layout({str(ca.prefix)!r}), use_system=False, now=now)\n")
    subprocess.run([GUEST_PYTHON, "-c", script], check=True,
                   env={**os.environ, "PYTHONPATH": str(CA_APPLIANCE.parent.parent / "lib/ca-appliance")})
    code, facts = _status(ca)
    assert code == 1 and facts["state"] == "warning", facts
    assert facts["intermediate"]["days_left"] in (29, 30)

    result = run_cli("watch", "--prefix", ca.prefix, "--no-system", "--health")
    assert result.returncode == 0  # the timer's unit does not fail over what it reported
    warning = [line for line in result.stdout.splitlines() if line.startswith("<4>")]
    assert warning and "intermediate certificate expires" in warning[0] and "renew-intermediate" in warning[0]
    banner = (ca.prefix / "etc/issue.d/ca-appliance.issue").read_text()
    assert "WARNING: the intermediate certificate expires" in banner
    assert root_fingerprint(ca) in banner

    run_cli("renew-intermediate", "--prefix", ca.prefix, "--no-system")
    ok = run_cli("watch", "--prefix", ca.prefix, "--no-system")
    assert ok.stdout.startswith("<6>") and "ok:" in ok.stdout
    assert "WARNING" not in (ca.prefix / "etc/issue.d/ca-appliance.issue").read_text()


def test_watch_reports_an_unhealthy_step_ca_as_an_error(make_ca):
    ca = make_ca()
    result = run_cli("watch", "--prefix", ca.prefix, "--no-system", "--health")
    assert any(line.startswith("<3>") and "step-ca is not healthy" in line for line in result.stdout.splitlines())
    assert "CRITICAL: step-ca is not healthy" in (ca.prefix / "etc/issue.d/ca-appliance.issue").read_text()


def test_banner_marks_a_test_image_and_shows_the_client_page(make_ca):
    ca = make_ca()
    build_json = ca.prefix / "usr/lib/ca-appliance/build.json"
    build_json.parent.mkdir(parents=True)
    build_json.write_text(json.dumps({"test_only": True, "client_page": True}))
    run_cli("watch", "--prefix", ca.prefix, "--no-system")
    banner = (ca.prefix / "etc/issue.d/ca-appliance.issue").read_text()
    assert "TEST IMAGE - not for production" in banner
    assert "http://ca.test.example/" in banner
    _, facts = _status(ca)
    assert facts["test_image"] is True and facts["client_page_url"] == "http://ca.test.example/"


# --- revocation -------------------------------------------------------------------------------

def _renew(ca, cert_path, key_path):
    """POST /renew authenticated by the certificate itself (mutual TLS), as `step ca renew` does."""
    context = ssl.create_default_context(cafile=str(ca.root))
    context.load_cert_chain(str(cert_path), str(key_path))
    request = urllib.request.Request(f"{ca.url}/renew", data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _write_leaf(tmp_path, name, body, key):
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_text(body["crt"] + body["ca"])
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_jwk_revocation_stops_renewal(running_ca, tmp_path):
    ca = running_ca
    body, key = _issue_and_verify(ca, tmp_path, "revoke-me")
    cert_path, key_path = _write_leaf(tmp_path, "revoke-me", body, key)
    assert _renew(ca, cert_path, key_path) in (200, 201)
    serial = str(x509.load_pem_x509_certificate(body["crt"].encode()).serial_number)

    jwk = ca.provisioner("JWK")
    token = one_time_token(provisioner_key(ca), jwk["name"], serial, f"{ca.url}/revoke",
                           {"alg": "ES256", "typ": "JWT", "kid": jwk["key"]["kid"]}, sha=root_fingerprint(ca))
    status, answer = post(ca, "/revoke", {"serial": serial, "ott": token, "passive": True,
                                          "reasonCode": 1, "reason": "key compromise (test)"})
    assert status == 200, answer
    assert answer.get("status") == "ok"
    assert _renew(ca, cert_path, key_path) == 401  # passive revocation: no renewal
    # a token for another serial does not revoke this one
    other_body, other_key = _issue_and_verify(ca, tmp_path, "keep-me")
    other_serial = str(x509.load_pem_x509_certificate(other_body["crt"].encode()).serial_number)
    status, _ = post(ca, "/revoke", {"serial": other_serial, "ott": jwk_token(ca, serial, []), "passive": True})
    assert status in (400, 401, 403)
    assert _renew(ca, *_write_leaf(tmp_path, "keep-me", other_body, other_key)) in (200, 201)


def test_acme_revoke_cert_stops_renewal(running_ca, tmp_path, port_80_free):
    ca = running_ca
    issued = certbot_certonly(ca, tmp_path)
    assert issued.returncode == 0, issued.stdout + issued.stderr
    live = tmp_path / "config/live" / NAME
    assert _renew(ca, live / "fullchain.pem", live / "privkey.pem") in (200, 201)
    revoked = certbot(ca, tmp_path, "revoke", "--cert-path", live / "cert.pem", "--no-delete-after-revoke",
                      "--reason", "keycompromise")
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert _renew(ca, live / "fullchain.pem", live / "privkey.pem") == 401
