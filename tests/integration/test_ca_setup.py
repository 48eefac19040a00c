"""`ca-appliance setup` and `status` as an admin meets them: the files, their modes, the refusals."""
import json
import stat
import subprocess

import pytest
import yaml
from ca_helpers import CA, PASSWORD, answers_for, free_port, run_cli, run_cli_on_terminal
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_layout_and_modes_are_step_ca_inits(make_ca):
    ca = make_ca()
    steppath = ca.steppath
    for name in ("config/ca.json", "config/defaults.json", "certs/root_ca.crt", "certs/intermediate_ca.crt",
                 "certs/ssh_host_ca_key.pub", "certs/ssh_user_ca_key.pub"):
        assert (steppath / name).is_file(), name
    for name in ("root_ca_key", "intermediate_ca_key", "ssh_host_ca_key", "ssh_user_ca_key"):
        assert mode(steppath / "secrets" / name) == 0o600, name
    assert mode(steppath / "secrets") == 0o700
    assert mode(ca.password_file) == 0o400
    assert ca.password_file.read_text() == PASSWORD
    assert (ca.prefix / "var/lib/step-ca/db").is_dir()
    assert mode(ca.prefix / "var/lib/step-ca/db") == 0o700


def test_every_path_in_ca_json_is_under_the_prefix(make_ca):
    ca = make_ca()
    config = ca.config
    paths = [config["root"], config["crt"], config["key"], config["db"]["dataSource"],
             config["ssh"]["hostKey"], config["ssh"]["userKey"]]
    for path in paths:
        assert path.startswith(str(ca.prefix) + "/"), path
    defaults = json.loads((ca.steppath / "config/defaults.json").read_text())
    assert defaults["ca-url"] == ca.url
    assert defaults["root"] == str(ca.root)


def test_provisioners_and_claims(make_ca):
    config = make_ca().config
    kinds = [(p["type"], p["name"]) for p in config["authority"]["provisioners"]]
    assert kinds == [("JWK", "admin@test.example"), ("ACME", "acme"), ("SSHPOP", "sshpop")]  # X5C: operator roots only
    jwk, acme = config["authority"]["provisioners"][:2]
    assert jwk["claims"] == {"defaultTLSCertDuration": "744h", "maxTLSCertDuration": "8760h", "enableSSHCA": True}
    assert acme["claims"] == {"defaultTLSCertDuration": "744h", "maxTLSCertDuration": "4320h"}
    assert acme["challenges"] == ["http-01", "dns-01", "tls-alpn-01"]
    assert config["db"]["type"] == "badgerv2"


def test_ssh_off_leaves_out_ssh_keys_and_sshpop(make_ca):
    ca = make_ca(ssh=False)
    config = ca.config
    assert "ssh" not in config
    assert [p["type"] for p in config["authority"]["provisioners"]] == ["JWK", "ACME"]
    assert not (ca.steppath / "secrets/ssh_host_ca_key").exists()


def test_intermediate_is_pathlen_0_under_a_10_year_root(make_ca):
    ca = make_ca()
    root = x509.load_pem_x509_certificate(ca.root.read_bytes())
    intermediate = x509.load_pem_x509_certificate(ca.intermediate.read_bytes())
    constraints = intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    assert (root.not_valid_after_utc - root.not_valid_before_utc).days in range(3650, 3653)
    assert (intermediate.not_valid_after_utc - intermediate.not_valid_before_utc).days in range(1825, 1827)
    assert intermediate.issuer == root.subject
    result = subprocess.run(["openssl", "verify", "-CAfile", str(ca.root), str(ca.intermediate)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_keys_are_encrypted_with_the_password(make_ca):
    ca = make_ca()
    key_pem = (ca.steppath / "secrets/intermediate_ca_key").read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in key_pem
    with pytest.raises((TypeError, ValueError)):
        serialization.load_pem_private_key(key_pem, password=None)
    assert serialization.load_pem_private_key(key_pem, password=PASSWORD.encode())


@pytest.mark.parametrize("key_type, check", [
    ("EC-P384", lambda key: isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1"),
    ("RSA-3072", lambda key: isinstance(key, rsa.RSAPublicKey) and key.key_size == 3072),
])
def test_other_key_types_load_in_step_ca(make_ca, serve, key_type, check):
    ca = make_ca(key_type=key_type)
    assert check(x509.load_pem_x509_certificate(ca.intermediate.read_bytes()).public_key())
    serve(ca)  # step-ca decrypts the intermediate key and answers /health


def test_second_setup_refuses_without_force(make_ca):
    ca = make_ca()
    before = ca.root.read_bytes()
    result = ca.setup(check=False)
    assert result.returncode == 2
    assert "already configured" in result.stderr and "--force" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert ca.root.read_bytes() == before


def test_force_replaces_the_ca_after_a_timestamped_backup(make_ca):
    ca = make_ca()
    old_root = ca.root.read_bytes()
    result = ca.setup("--force")
    backups = list((ca.prefix / "var/backups/ca-appliance").glob("ca-appliance-*.tar.gz"))
    assert len(backups) == 1, result.stdout
    assert mode(backups[0]) == 0o600
    assert ca.root.read_bytes() != old_root
    assert str(backups[0]) in result.stdout


def test_status_reports_what_an_admin_needs(make_ca):
    ca = make_ca()
    fingerprint = next(line.split(":", 1)[1].strip() for line in ca.setup_output.stdout.splitlines()
                       if "Root fingerprint" in line)
    out = run_cli("status", "--prefix", ca.prefix).stdout
    assert fingerprint in out
    assert f"{ca.url}/acme/acme/directory" in out
    assert "admin@test.example (JWK), acme (ACME), sshpop (SSHPOP)" in out
    assert "intermediate expires:" in out
    assert "answers-file" in out
    assert "step CLI:" in out


def test_status_without_a_ca_says_to_run_setup(tmp_path):
    result = run_cli("status", "--prefix", tmp_path, check=False)
    assert result.returncode == 2
    assert "ca-appliance setup" in result.stderr


def test_bad_answers_exit_2_with_one_line_and_write_nothing(tmp_path):
    port = free_port()
    ca = CA(tmp_path / "ca", port, answers_for(port, address="127.0.0.1:70000"))
    result = ca.setup(check=False)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("answers error: ca.address: '127.0.0.1:70000'")
    assert not ca.prefix.exists() or not any(ca.prefix.iterdir())


def test_dns_names_outside_the_name_constraints_are_refused(tmp_path):
    port = free_port()
    ca = CA(tmp_path / "ca", port, answers_for(port, name_constraints={"dns": ["lab.example"], "ip": []}))
    result = ca.setup(check=False)
    assert result.returncode == 2
    assert "'localhost' is outside ca.name_constraints" in result.stderr
    assert not ca.ca_json.exists()


def test_a_failed_setup_leaves_the_previous_ca(make_ca):
    ca = make_ca()
    before = {p: p.read_bytes() for p in ca.steppath.rglob("*") if p.is_file()}
    (ca.prefix / "var/lib").chmod(0o755)
    # /var/lib/step-ca's parent replaced by a file: staging the new database must fail.
    data_parent = ca.prefix / "var/lib"
    data_parent.rename(ca.prefix / "var/lib.moved")
    data_parent.write_text("not a directory")
    result = ca.setup("--force", check=False)
    assert result.returncode == 1
    assert "setup (" in result.stderr and "previous state was left as it was" in result.stderr
    after = {p: p.read_bytes() for p in ca.steppath.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in (ca.prefix / "etc").iterdir() if p.name.startswith(".step-ca")]



def offline_ca(tmp_path, name="ca"):
    port = free_port()
    ca = CA(tmp_path / name, port, answers_for(port, root_key="offline"))
    answers_file = tmp_path / f"{name}-answers.yaml"
    answers_file.write_text(yaml.safe_dump(ca.answers))
    return ca, answers_file


def root_key_matches(ca, pem, passphrase):
    root_key = serialization.load_pem_private_key(pem, password=passphrase.encode())
    root = x509.load_pem_x509_certificate(ca.root.read_bytes())
    return root_key.public_key().public_numbers() == root.public_key().public_numbers()


def test_offline_root_key_is_shown_on_the_terminal_only_under_its_own_passphrase(tmp_path):
    ca, answers_file = offline_ca(tmp_path)
    status, shown, stderr = run_cli_on_terminal("setup", "--answers", answers_file, "--prefix", ca.prefix,
                                                "--no-system")
    assert status == 0, shown + stderr
    assert not (ca.steppath / "secrets/root_ca_key").exists()
    pem = shown[shown.index("-----BEGIN ENCRYPTED"):shown.index("-----END ENCRYPTED PRIVATE KEY-----") + 35].encode()
    passphrase = shown.split("shown once): ", 1)[1].split()[0]
    assert passphrase != PASSWORD and len(passphrase) >= 32
    assert root_key_matches(ca, pem, passphrase)
    with pytest.raises(ValueError):  # not under the CA password kept in password.txt
        serialization.load_pem_private_key(pem, password=ca.password_file.read_bytes())
    assert "offline" in run_cli("status", "--prefix", ca.prefix).stdout


def test_offline_root_key_never_goes_to_a_log(tmp_path):
    ca, answers_file = offline_ca(tmp_path)
    result = run_cli("setup", "--answers", answers_file, "--prefix", ca.prefix, "--no-system", check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "BEGIN" not in result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "root_key: offline" in result.stderr
    assert not ca.prefix.exists() or not any(ca.prefix.rglob("*.json"))


def test_root_key_out_is_written_before_the_commit_and_a_bad_path_changes_nothing(tmp_path):
    ca, answers_file = offline_ca(tmp_path)
    for bad in (tmp_path / "missing-dir/root.key", tmp_path):
        status, shown, stderr = run_cli_on_terminal("setup", "--answers", answers_file, "--prefix", ca.prefix,
                                                    "--no-system", "--root-key-out", bad)
        assert status == 2, shown + stderr
        assert len(stderr.strip().splitlines()) == 1 and "--root-key-out" in stderr and "Traceback" not in stderr
        assert not ca.ca_json.exists() and "BEGIN" not in shown
    key_file = tmp_path / "root.key"
    status, shown, stderr = run_cli_on_terminal("setup", "--answers", answers_file, "--prefix", ca.prefix,
                                                "--no-system", "--root-key-out", key_file)
    assert status == 0, shown + stderr
    assert "BEGIN" not in shown and mode(key_file) == 0o600
    passphrase = shown.split("shown once): ", 1)[1].split()[0]
    assert root_key_matches(ca, key_file.read_bytes(), passphrase)


def test_generated_password_is_long_and_shown_once(tmp_path):
    """Shown once on the terminal setup runs on; output that is not a terminal (the journal) never
    holds it, it says where the password is kept instead."""
    port = free_port()
    ca = CA(tmp_path / "ca", port, answers_for(port, password=None))
    out = ca.setup().stdout
    password = ca.password_file.read_text()
    assert len(password) >= 32
    assert password not in out and f"sudo cat {ca.password_file}" in out
    port = free_port()
    on_terminal = CA(tmp_path / "ca-terminal", port, answers_for(port, password=None))
    answers_file = tmp_path / "terminal-answers.yaml"
    answers_file.write_text(yaml.safe_dump(on_terminal.answers))
    status, shown, stderr = run_cli_on_terminal("setup", "--answers", answers_file, "--prefix",
                                                on_terminal.prefix, "--no-system")
    assert status == 0, shown + stderr
    password = on_terminal.password_file.read_text()
    assert shown.count(password) == 1 and password not in stderr
