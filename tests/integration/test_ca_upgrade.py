"""Upgrades: backup on appliance N, restore at the first boot of N+1 (answers or the wizard).

fixtures/backup-format1.tar.gz was written by `ca-appliance backup` in format 1 (a plain tar.gz,
the format before encrypted backups) of a test CA (password: FORMAT1_PASSWORD) on which certbot
had registered an ACME account; fixtures/backup-format1-acme-account.json is that account's
(test-only) key. Restoring it must bring back the same root, the same provisioners and the account.
"""
import base64
import json
import shutil
import ssl
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import jwcrypto.jwk
import jwcrypto.jws
import pexpect
import yaml
from ca_helpers import CA, free_port, openssl_verify, run_cli
from helpers.wizard import start_setup
from test_ca_provisioners import sign

FIXTURES = Path(__file__).parent / "fixtures"
FORMAT1 = FIXTURES / "backup-format1.tar.gz"
FORMAT1_ACCOUNT_KEY = FIXTURES / "backup-format1-acme-account.json"
FORMAT1_ACCOUNT_ID = "eEvY6rHqtG5urHhaW2bO314eELpLI2AL"


# the password of the CA the fixture archive holds (made before today's password strength rule)
FORMAT1_PASSWORD = "integration-test-password-0123456789"

def format1_manifest():
    with tarfile.open(FORMAT1) as tar:
        return json.load(tar.extractfile("ca-appliance-backup.json"))


def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def existing_account(ca, key):
    """ACME newAccount with onlyReturnExisting (RFC 8555 7.3.1): the account's URL, or None when unknown."""
    context = ssl.create_default_context(cafile=str(ca.root))
    with urllib.request.urlopen(f"{ca.url}/acme/acme/directory", context=context, timeout=30) as response:
        directory = json.load(response)
    head = urllib.request.Request(directory["newNonce"], method="HEAD")
    with urllib.request.urlopen(head, context=context, timeout=30) as response:
        nonce = response.headers["Replay-Nonce"]
    protected = {"alg": "RS256", "jwk": json.loads(key.export_public()), "nonce": nonce, "url": directory["newAccount"]}
    jws = jwcrypto.jws.JWS(json.dumps({"onlyReturnExisting": True}).encode())
    jws.add_signature(key, alg="RS256", protected=json.dumps(protected))
    body = json.loads(jws.serialize())
    request = urllib.request.Request(directory["newAccount"], data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/jose+json"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.headers["Location"]
    except urllib.error.HTTPError as error:
        assert b"accountDoesNotExist" in error.read()
        return None


def restored_ca(prefix):
    """A CA object for a restored prefix, moved to a free loopback port (the backup's may be taken)."""
    port = free_port()
    ca_json = prefix / "etc/step-ca/config/ca.json"
    config = json.loads(ca_json.read_text())
    config["address"] = f"127.0.0.1:{port}"
    ca_json.write_text(json.dumps(config, indent=2))
    return CA(prefix, port, answers=None)


def test_unattended_answers_restore_a_previous_format_backup(tmp_path, serve):
    seed = tmp_path / "seed"   # what a CASEED volume holds: the answers and the archive side by side
    seed.mkdir()
    shutil.copy(FORMAT1, seed / "ca-backup.tar.gz")
    (seed / "ca-appliance.yaml").write_text(yaml.safe_dump({"restore": "ca-backup.tar.gz"}))
    prefix = tmp_path / "new-appliance"
    result = run_cli("setup", "--answers", seed / "ca-appliance.yaml", "--prefix", prefix, "--no-system")
    fingerprint = format1_manifest()["root_fingerprint"]
    assert fingerprint in result.stdout and "Restored the CA" in result.stdout
    facts = json.loads(run_cli("status", "--json", "--prefix", prefix).stdout)
    assert facts["root_fingerprint"] == fingerprint
    assert [p["name"] for p in facts["provisioners"]][:2] == ["admin@test.example", "acme"]
    assert fingerprint in (prefix / "etc/issue.d/ca-appliance.issue").read_text()
    assert (seed / "ca-backup.tar.gz").exists()  # the operator's file is left alone

    ca = restored_ca(prefix)
    serve(ca)
    key = jwcrypto.jwk.JWK.from_json(FORMAT1_ACCOUNT_KEY.read_text())
    location = existing_account(ca, key)
    assert location is not None and location.endswith(FORMAT1_ACCOUNT_ID), location
    stranger = jwcrypto.jwk.JWK.generate(kty="RSA", size=2048)
    assert existing_account(ca, stranger) is None  # the check can fail
    ca.jwe_rounds = 100000   # the provisioner key as the earlier version encrypted it, restored as it was
    ca.password = FORMAT1_PASSWORD
    status, body, _ = sign(ca, "after-upgrade.test.example", ["after-upgrade.test.example"])  # same JWK, password
    assert status == 201, body
    (tmp_path / "leaf.pem").write_text(body["crt"])
    (tmp_path / "chain.pem").write_text(body["ca"])
    verified = openssl_verify(ca.root, tmp_path / "chain.pem", tmp_path / "leaf.pem")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert FORMAT1_PASSWORD == (prefix / "etc/step-ca/password.txt").read_text().strip()


def test_answers_naming_a_missing_backup_fail_without_a_half_configured_ca(tmp_path):
    answers = tmp_path / "answers.yaml"
    answers.write_text(yaml.safe_dump({"restore": {"archive": "nowhere.tar.gz"}}))
    prefix = tmp_path / "new-appliance"
    result = run_cli("setup", "--answers", answers, "--prefix", prefix, "--no-system", check=False)
    assert result.returncode == 2
    assert "restore" in result.stderr and "nowhere.tar.gz" in result.stderr
    assert not (prefix / "etc/step-ca/config/ca.json").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"restore": {"archive": "x.tar.gz", "passphrase": "s3cret-value", "when": 1}}))
    result = run_cli("setup", "--answers", bad, "--prefix", prefix, "--no-system", check=False)
    assert result.returncode == 2 and "restore.when" in result.stderr and "s3cret-value" not in result.stderr


def new_appliance_with_backup(tmp_path, name):
    """A new appliance's root holding, where the wizard looks, a backup written by version N."""
    prefix = tmp_path / "new-appliance"
    backups = prefix / "var/backups/ca-appliance"
    backups.mkdir(parents=True)
    shutil.copy(FORMAT1, backups / name)
    return prefix


def test_the_wizard_offers_a_backup_it_finds(tmp_path):
    prefix = new_appliance_with_backup(tmp_path, "ca-appliance-from-n.tar.gz")
    child = start_setup(prefix, timeout=60)
    child.expect_exact("Backups of a CA were found")
    child.expect_exact("ca-appliance-from-n.tar.gz")
    child.expect_exact("Restore which backup (1-1), or Enter for a new CA? [new]")
    child.sendline("7")
    child.expect_exact("please answer a number from 1 to 1")
    child.sendline("1")
    child.expect_exact("Restored the CA")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    facts = json.loads(run_cli("status", "--json", "--prefix", prefix).stdout)
    assert facts["root_fingerprint"] == format1_manifest()["root_fingerprint"]


def test_the_wizard_still_creates_a_new_ca_when_the_offer_is_declined(tmp_path):
    prefix = new_appliance_with_backup(tmp_path, "old.tar.gz")
    child = start_setup(prefix, timeout=60)
    child.expect_exact("Enter for a new CA? [new]")
    child.sendline("")
    child.expect_exact("Host name of this appliance")  # the wizard's first question: a new CA after all
    child.close(force=True)
    assert not (prefix / "etc/step-ca/config/ca.json").exists()


def test_setup_restore_over_an_existing_ca_keeps_the_old_one(make_ca, tmp_path):
    ca = make_ca()
    old = ca.root.read_bytes()
    result = run_cli("setup", "--restore", FORMAT1, "--force", "--prefix", ca.prefix, "--no-system")
    assert "Previous CA saved to" in result.stdout
    assert ca.root.read_bytes() != old
    saved = list((ca.prefix / "var/backups/ca-appliance").glob("ca-appliance-*.tar.gz"))
    assert len(saved) == 1
    with tarfile.open(saved[0]) as tar:
        assert tar.extractfile("etc/step-ca/certs/root_ca.crt").read() == old
    missing = run_cli("setup", "--restore", tmp_path / "none.tar.gz", "--force", "--prefix", ca.prefix,
                      "--no-system", check=False)
    assert missing.returncode == 2 and "no such backup archive" in missing.stderr


def test_answers_restore_a_plain_archive_given_a_passphrase_only_with_allow_unencrypted(tmp_path):
    # issue 21: a plain (unauthenticated) archive was restored silently although a passphrase was given
    seed = tmp_path / "seed"
    seed.mkdir()
    shutil.copy(FORMAT1, seed / "ca-backup.tar.gz")
    request = {"archive": "ca-backup.tar.gz", "passphrase": "a-passphrase-for-a-sealed-one"}
    answers = seed / "ca-appliance.yaml"
    answers.write_text(yaml.safe_dump({"restore": request}))
    prefix = tmp_path / "new-appliance"
    refused = run_cli("setup", "--answers", answers, "--prefix", prefix, "--no-system", check=False)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "allow-unencrypted" in refused.stderr and request["passphrase"] not in refused.stderr
    assert not (prefix / "etc/step-ca").exists()
    answers.write_text(yaml.safe_dump({"restore": {**request, "allow_unencrypted": True}}))
    restored = run_cli("setup", "--answers", answers, "--prefix", prefix, "--no-system")
    assert format1_manifest()["root_fingerprint"] in restored.stdout


def test_a_restore_key_the_answers_do_not_know_is_named_without_its_value(tmp_path):
    answers = tmp_path / "ca-appliance.yaml"
    answers.write_text(yaml.safe_dump({"restore": {"archive": str(FORMAT1), "pasphrase": "typo-secret-value"}}))
    result = run_cli("setup", "--answers", answers, "--prefix", tmp_path / "p", "--no-system", check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "restore.pasphrase" in result.stderr and "typo-secret-value" not in result.stderr
