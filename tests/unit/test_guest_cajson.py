"""ca.json/defaults.json generation and the all-or-nothing apply, under the newest libraries."""
import io
import json
import os
from pathlib import Path

import pytest
from ca_appliance import answers, apply, cajson, staging
from ca_appliance.errors import StepFailed, UserError
from ca_appliance.layout import Layout

GUEST_LIB = Path(__file__).resolve().parents[2] / "overlay/usr/lib/ca-appliance"


def validated(**ca):
    base = {"name": "Unit CA", "dns_names": ["ca.lab.example", "192.168.70.10"], "address": ":443",
            "provisioner": "admin@lab.example", "password": "unit-test-password", "ssh": True}
    base.update(ca)
    return answers.validate({"hostname": "ca.lab.example", "ca": base}, answers.load_defaults())


@pytest.mark.parametrize("address, names, url", [
    (":443", ["ca.lab.example"], "https://ca.lab.example"),
    ("127.0.0.1:8443", ["ca.lab.example", "127.0.0.1"], "https://ca.lab.example:8443"),
    (":9000", ["fd00::1"], "https://[fd00::1]:9000"),
])
def test_ca_url_and_acme_directory(address, names, url):
    ca = {"address": address, "dns_names": names}
    assert cajson.ca_url(ca) == url
    assert cajson.acme_directory_url(ca) == url + "/acme/acme/directory"


def test_ca_json_fields_for_step_ca(tmp_path):
    ca = validated()["ca"]
    layout = Layout(tmp_path)
    config = cajson.ca_json(ca, layout, b"ROOT PEM", {"kid": "k"}, "jwe")
    assert config["root"] == str(tmp_path / "etc/step-ca/certs/root_ca.crt")
    assert config["key"] == str(tmp_path / "etc/step-ca/secrets/intermediate_ca_key")
    assert config["db"] == {"type": "badgerv2", "dataSource": str(tmp_path / "var/lib/step-ca/db"),
                            "badgerFileLoadingMode": ""}
    assert config["dnsNames"] == ["ca.lab.example", "192.168.70.10"]
    assert config["ssh"]["hostKey"].endswith("secrets/ssh_host_ca_key")
    assert "tls" not in config  # step-ca's defaults fit RSA and EC intermediates alike
    # No X5C without operator roots: never this CA's own root (any ACME client could get any name).
    jwk, acme, sshpop = config["authority"]["provisioners"]
    assert (jwk["type"], jwk["name"], jwk["encryptedKey"]) == ("JWK", "admin@lab.example", "jwe")
    assert jwk["claims"]["enableSSHCA"] is True
    assert acme["claims"] == {"defaultTLSCertDuration": "744h", "maxTLSCertDuration": "4320h"}
    assert sshpop == {"type": "SSHPOP", "name": "sshpop", "claims": {"enableSSHCA": True}}


def operator_root_pem(ca=True):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Operator Root")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_x5c_trusts_only_the_operator_roots(tmp_path):
    import base64
    pem = operator_root_pem()
    ca = validated(x5c_roots="\n" + pem + pem)["ca"]
    assert ca["x5c_roots"] == pem + pem
    x5c = [p for p in cajson.ca_json(ca, Layout(tmp_path), b"ROOT PEM", {}, "")["authority"]["provisioners"]
           if p["type"] == "X5C"]
    assert x5c == [{"type": "X5C", "name": "x5c", "roots": base64.b64encode((pem + pem).encode()).decode(),
                    "options": cajson.x509_options("http://ca.lab.example/crl")}]


@pytest.mark.parametrize("value, words", [
    ("not pem", "holds no PEM certificate"),
    ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a readable PEM certificate"),
    (None, None), ("", None), (42, "must be a PEM bundle"),
])
def test_x5c_roots_validation(value, words):
    if words is None:
        assert validated(x5c_roots=value)["ca"]["x5c_roots"] is None
        return
    with pytest.raises(answers.AnswersError) as caught:
        validated(x5c_roots=value)
    assert str(caught.value).startswith("answers error: ca.x5c_roots:") and words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_x5c_roots_must_be_ca_certificates():
    refused = r"certificate 1 \(CN=Operator Root, SHA-256 [0-9a-f]{64}\) is not a CA"
    with pytest.raises(answers.AnswersError, match=refused):
        validated(x5c_roots=operator_root_pem(ca=False))


def test_claims_follow_the_answers(tmp_path):
    ca = validated(claims={"acme": {"default": "24h", "max": "48h"}, "jwk": {"default": "1h", "max": "2h"}})["ca"]
    jwk, acme = cajson.ca_json(ca, Layout(tmp_path), b"x", {}, "")["authority"]["provisioners"][:2]
    assert acme["claims"] == {"defaultTLSCertDuration": "24h", "maxTLSCertDuration": "48h"}
    assert jwk["claims"]["maxTLSCertDuration"] == "2h"


def test_defaults_json(tmp_path):
    ca = validated(address=":8443")["ca"]
    assert cajson.defaults_json(ca, Layout(tmp_path), "abc") == {
        "ca-url": "https://ca.lab.example:8443", "ca-config": str(tmp_path / "etc/step-ca/config/ca.json"),
        "fingerprint": "abc", "root": str(tmp_path / "etc/step-ca/certs/root_ca.crt")}


def test_generated_password():
    password = apply.generate_password()
    assert len(password) >= 32 and set(password) <= set(apply.PASSWORD_ALPHABET)
    assert apply.generate_password() != password


def test_firewalld_service_carries_the_configured_port():
    assert '<port protocol="tcp" port="8443"/>' in apply.firewalld_service_xml(8443)


def snapshot(root):
    return {p.relative_to(root): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_swap_failure_puts_every_old_tree_back(tmp_path, monkeypatch):
    first, second = tmp_path / "a/tree", tmp_path / "b/tree"
    for tree in (first, second):
        tree.mkdir(parents=True)
        (tree / "old").write_text("old")
    before = snapshot(tmp_path)
    stage = staging.Staging()
    for tree in (first, second):
        (stage.stage_dir(tree) / "new").write_text("new")
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 4:  # the second tree's staged -> final
            raise KeyboardInterrupt
        return real_rename(src, dst)

    monkeypatch.setattr(staging.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        stage.swap()
    monkeypatch.setattr(staging.os, "rename", real_rename)
    assert snapshot(tmp_path) == before


def test_interrupted_setup_leaves_the_previous_ca(tmp_path, monkeypatch):
    layout = Layout(tmp_path)
    apply.setup(validated(), "test", layout, use_system=False, out=io.StringIO())
    before = snapshot(tmp_path)
    real_write = apply._write_step_tree

    def interrupted(*args, **kwargs):
        real_write(*args, **kwargs)
        raise KeyboardInterrupt  # Ctrl-C with the new tree half staged

    monkeypatch.setattr(apply, "_write_step_tree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        apply.setup(validated(), "test", layout, use_system=False, force=True, out=io.StringIO())
    after = snapshot(tmp_path)
    # Only the --force backup (written before staging) is new.
    assert {path for path in after if path not in before} <= {
        p for p in after if str(p).startswith("var/backups")}
    assert {path: data for path, data in after.items() if not str(path).startswith("var/backups")} == before


def test_setup_twice_refuses_without_force(tmp_path):
    layout = Layout(tmp_path)
    apply.setup(validated(), "test", layout, use_system=False, out=io.StringIO())
    with pytest.raises(UserError, match="--force"):
        apply.setup(validated(), "test", layout, use_system=False, out=io.StringIO())


def test_state_records_the_answers_source(tmp_path):
    layout = Layout(tmp_path)
    apply.setup(validated(), "caseed", layout, use_system=False, out=io.StringIO())
    state = json.loads(layout.state_file.read_text())
    assert state["answers_source"] == "caseed"
    assert state["acme_directory"] == "https://ca.lab.example/acme/acme/directory"


def test_an_os_error_while_staging_is_a_step_failure_naming_the_step(tmp_path):
    (tmp_path / "var").write_text("a file where /var should be")
    with pytest.raises(StepFailed, match=r"setup \(stage files\).*left as it was"):
        apply.setup(validated(), "test", Layout(tmp_path), use_system=False, out=io.StringIO())
    assert not (tmp_path / "etc/step-ca").exists()


def test_chown_tree_gives_every_file_to_the_user(tmp_path):
    import pwd

    from ca_appliance import system

    (tmp_path / "tree/secrets").mkdir(parents=True)
    (tmp_path / "tree/secrets/key").write_text("k")
    nobody = pwd.getpwnam("nobody")
    system.chown_tree(tmp_path / "tree", nobody)
    assert {p.stat().st_uid for p in [tmp_path / "tree", *(tmp_path / "tree").rglob("*")]} == {nobody.pw_uid}


def test_the_root_key_stays_roots_when_the_tree_goes_to_step(tmp_path):
    import pwd

    from ca_appliance import replace
    tree = tmp_path / "staged"
    (tree / "secrets").mkdir(parents=True)
    for name in ("root_ca_key", "intermediate_ca_key"):
        (tree / "secrets" / name).write_text("k")
    nobody = pwd.getpwnam("nobody")
    replace.give_to_step(Layout(tmp_path), tree, nobody, steppath_tree=True)
    assert (tree / "secrets/root_ca_key").stat().st_uid == 0  # step-ca never reads it
    assert (tree / "secrets/intermediate_ca_key").stat().st_uid == nobody.pw_uid


def test_sshd_dropin_is_key_only_for_the_admin(tmp_path):
    layout = Layout(tmp_path)
    apply.setup(validated(), "test", layout, use_system=False, out=io.StringIO())
    text = layout.sshd_dropin.read_text()
    settings = dict(line.split(None, 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert settings == {"PasswordAuthentication": "no", "KbdInteractiveAuthentication": "no",
                        "PermitRootLogin": "no", "AllowUsers": "admin"}
    assert layout.sshd_dropin.name.startswith("10-")  # sshd takes the first value: read before 50-*.conf
    assert layout.setup_complete.exists()


def test_first_boot_runs_until_setup_wrote_its_completion_marker(tmp_path):
    """Gated on ca.json, a power cut after the commit would skip the system steps for good."""
    unit = (GUEST_LIB.parents[2] / "etc/systemd/system/ca-appliance-firstboot.service").read_text()
    conditions = [line for line in unit.splitlines() if line.startswith("Condition")]
    marker = Layout().setup_complete
    assert conditions == [f"ConditionPathExists=!{marker}"]
    layout = Layout(tmp_path)
    apply.setup(validated(), "test", layout, use_system=False, out=io.StringIO())
    assert layout.setup_complete.exists() and apply.resumable(layout) is None
    layout.setup_complete.unlink()  # as if the power went after the commit
    assert apply.resumable(layout)["admin"]["user"] == "admin"


def test_everything_setup_did_is_synced_before_the_completion_marker(tmp_path, monkeypatch):
    """The marker ends the first boot for good, so what the system steps wrote must be on disk before it:
    a power cut right after 'Your CA is ready' left the marker and an empty authorized_keys (soak, seed
    2028), and the admin was locked out. Here: sync(2) runs once, before the marker exists. The cut itself
    is exercised in `invoke soak` (phase 'just after setup reported ready'); a unit test cannot pull power."""
    layout = Layout(tmp_path)
    synced_with_marker = []
    real_sync = apply.os.sync
    monkeypatch.setattr(apply.os, "sync", lambda: (synced_with_marker.append(layout.setup_complete.exists()),
                                                   real_sync()))
    apply.setup(validated(), "test", layout, use_system=False, out=io.StringIO())
    assert synced_with_marker == [False]
    assert layout.setup_complete.exists()
