"""The first-boot wizard on a real terminal, through the real CLI, with Debian's own python3.

Each test drives `ca-appliance setup --prefix DIR --no-system` under a pseudo-terminal like a
person at the console would, and checks what lands under DIR.
"""

import json
from pathlib import Path

import pexpect
import pytest
from helpers.wizard import (
    GUEST_PYTHON,
    NEEDS_GUEST_PYTHON,
    QUESTIONS,
    answer,
    bake,
    files_under,
    finish,
    start_setup,
    walk,
)

pytestmark = pytest.mark.skipif(not Path(GUEST_PYTHON).exists(), reason=NEEDS_GUEST_PYTHON)

ED25519_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF2pOt2K2QRFWGUOR45v0pfO5z0KpWOzxkTWPjkXuPOl admin@laptop"
PASSWORD = "a long enough password"


def ca_json(prefix):
    return json.loads((prefix / "etc/step-ca/config/ca.json").read_text())


def test_bad_answers_are_asked_again_and_start_over_keeps_them_as_defaults(tmp_path):
    prefix = tmp_path / "root"
    child = start_setup(prefix)
    answer(child, "Host name of this appliance (fully qualified) [", "bad_host")
    child.expect_exact("Not accepted: 'bad_host' is not a fully qualified domain name")
    answer(child, "Host name of this appliance (fully qualified) [", "ca.lab.example")
    answer(child, "Network: dhcp or static? [dhcp]: ", "static")
    answer(child, "IPv4 address with prefix length (e.g. 192.168.70.10/24): ", "192.168.70.10/24")
    answer(child, "Gateway [192.168.70.1]: ", "10.0.0.1")
    child.expect_exact("must be another address inside 192.168.70.0/24")
    answer(child, "Gateway [192.168.70.1]: ", "")
    answer(child, "DNS servers (comma-separated) [192.168.70.1]: ", "")
    answer(child, QUESTIONS["ntp"] + " [pool]: ", "ntp_1.lab.example")
    child.expect_exact("Not accepted: 'ntp_1.lab.example' is neither a host name nor an IP address")
    answer(child, QUESTIONS["ntp"] + " [pool]: ", "ntp1.lab.example, 192.168.70.1")
    answer(child, "name your new PKI? (e.g. Lab CA) [Private CA]: ", "Lab CA")
    answer(child, "DNS names and IP addresses for your new CA (comma-separated) [ca.lab.example, 192.168.70.10]: ",
           "ca.lab.example, 192.168.70.10")
    answer(child, "listen at? (e.g. :443) [:443]: ", ":70000")
    child.expect_exact("Not accepted: ':70000' is not a listen address")
    answer(child, "listen at? (e.g. :443) [:443]: ", ":8443")
    answer(child, "first provisioner? (an email) [admin@ca.internal]: ", "admin at lab")
    child.expect_exact("Not accepted: 'admin at lab' is not an email address")
    answer(child, "first provisioner? (an email) [admin@ca.internal]: ", "admin@lab.example")
    answer(child, "Generate a random one (shown once, at the end)? [Y/n]: ", "n")
    answer(child, "Password [Enter: generate one after all]: ", "short")
    child.expect_exact("a password needs at least 16 characters")
    answer(child, "Password [Enter: generate one after all]: ", PASSWORD)
    answer(child, "Password again: ", PASSWORD + "!")
    child.expect_exact("The two passwords differ")
    answer(child, "Password [Enter: generate one after all]: ", PASSWORD)
    answer(child, "Password again: ", PASSWORD)
    answer(child, "sign SSH host and user certificates? [Y/n]: ", "maybe")
    child.expect_exact("type y or n")
    answer(child, "sign SSH host and user certificates? [Y/n]: ", "n")
    answer(child, "Admin's SSH public key ('none' for console login only) [none]: ", "ssh-ed25519 AAAA")
    child.expect_exact("is not an OpenSSH public key")
    answer(child, "Admin's SSH public key ('none' for console login only) [none]: ", ED25519_KEY)
    child.expect_exact("Please review:")
    child.expect_exact("Time servers:      ntp1.lab.example, 192.168.70.1")
    child.expect_exact("CA names:          ca.lab.example, 192.168.70.10")
    assert PASSWORD not in child.before
    answer(child, "Apply? [Y/n]: ", "n")

    # Start over: every answer given is now the default.
    walk(child, shown={"hostname": "ca.lab.example", "network": "static"}, stop="ntp")
    answer(child, "IPv4 address with prefix length (e.g. 192.168.70.10/24) [192.168.70.10/24]: ", "")
    answer(child, "Gateway [192.168.70.1]: ", "")
    answer(child, "DNS servers (comma-separated) [192.168.70.1]: ", "")
    walk(child, start="ntp", stop="ssh", shown={"ntp": "ntp1.lab.example, 192.168.70.1",
        "name": "Lab CA", "dns_names": "ca.lab.example, 192.168.70.10", "address": ":8443",
        "provisioner": "admin@lab.example", "generate": "y/N"})
    answer(child, "Password [Enter: keep the one typed before]: ", "")
    short_key = f"ssh-ed25519 ...{ED25519_KEY.split()[1][-8:]} admin@laptop"
    walk(child, start="ssh", shown={"ssh": "y/N", "admin_key": short_key})
    child.expect_exact("Please review:")
    # nothing written before the answer to "Apply?", but the lock setup holds while it runs (lock.py)
    assert files_under(tmp_path) == ["root", "root/run", "root/run/ca-appliance", "root/run/ca-appliance/lock"]
    answer(child, "Apply? [Y/n]: ", "y")
    child.expect_exact("Your CA is ready.")
    assert finish(child) == 0
    assert not (prefix / "run").exists()   # and the lock went with it

    config = ca_json(prefix)
    assert config["dnsNames"] == ["ca.lab.example", "192.168.70.10"]
    assert config["address"] == ":8443"
    assert [p["name"] for p in config["authority"]["provisioners"] if p["type"] == "JWK"] == ["admin@lab.example"]
    assert "ssh" not in config  # SSH CA declined
    assert (prefix / "etc/step-ca/password.txt").read_text().strip() == PASSWORD


def test_generated_password_is_shown_once_after_setup(tmp_path):
    prefix = tmp_path / "root"
    child = start_setup(prefix)
    walk(child, {"hostname": "pki.lab.example", "dns_names": "pki.lab.example"},
         shown={"network": "dhcp", "name": "Private CA", "address": ":443", "provisioner": "admin@ca.internal",
                "generate": "Y/n", "ssh": "Y/n", "admin_key": "none"})
    child.expect_exact("generated, shown once when setup is done")
    answer(child, "Apply? [Y/n]: ", "")
    child.expect(pexpect.EOF)
    shown = child.before
    child.close()
    assert child.exitstatus == 0
    password = (prefix / "etc/step-ca/password.txt").read_text().strip()
    assert len(password) >= 32
    assert shown.count(password) == 1
    assert ca_json(prefix)["dnsNames"] == ["pki.lab.example"]


def test_bad_unattended_answers_lead_to_the_wizard_and_an_empty_pki_name_is_asked_again(tmp_path):
    prefix = tmp_path / "root"
    bake(prefix, "hostname: baked.lab.example\nca: {name: '', provisioner: ops@lab.example, key_type: DSA}\n")
    child = start_setup(prefix)
    child.expect_exact("The unattended answers could not be used:")
    child.expect_exact("ca.name")
    child.expect_exact("baked")
    walk(child, shown={"hostname": "baked.lab.example", "network": "dhcp"}, stop="name")
    answer(child, "name your new PKI? (e.g. Lab CA): ", "   ")
    child.expect_exact("An answer is needed here.")
    answer(child, "name your new PKI? (e.g. Lab CA): ", "Baked CA")
    walk(child, {"dns_names": "baked.lab.example"}, start="dns_names", shown={"provisioner": "ops@lab.example"})
    # key_type is not asked: its bad preset value falls back to the default, and says so.
    child.expect_exact("Using the default for ca.key_type")
    answer(child, "Apply? [Y/n]: ", "")
    child.expect_exact("Your CA is ready.")
    assert finish(child) == 0
    state = json.loads((prefix / "etc/ca-appliance/state.json").read_text())
    assert state["key_type"] == "EC-P256"
    assert "baked" in state["answers_source"]


@pytest.mark.parametrize("stop_at", [QUESTIONS["hostname"], "Password [", "Apply? [Y/n]: "])
def test_ctrl_c_before_apply_leaves_nothing_under_the_prefix(tmp_path, stop_at):
    prefix = tmp_path / "root"
    prefix.mkdir()
    child = start_setup(prefix)
    replies = [
        (QUESTIONS["hostname"], "ca.lab.example"), (QUESTIONS["network"], ""), (QUESTIONS["ntp"], ""),
        (QUESTIONS["name"], ""),
        (QUESTIONS["dns_names"], "ca.lab.example"), (QUESTIONS["address"], ""), (QUESTIONS["provisioner"], ""),
        (QUESTIONS["generate"], "n"), ("Password [", PASSWORD), ("Password again: ", PASSWORD),
        (QUESTIONS["ssh"], ""), (QUESTIONS["admin_key"], ""), ("Apply? [Y/n]: ", ""),
    ]
    for question, reply in replies:
        child.expect_exact(question)
        if question.startswith(stop_at):
            child.sendintr()
            break
        child.sendline(reply)
    child.expect_exact("interrupted; nothing was changed")
    assert finish(child) == 130
    assert files_under(prefix) == []


def test_end_of_input_stops_like_ctrl_c(tmp_path):
    prefix = tmp_path / "root"
    prefix.mkdir()
    child = start_setup(prefix)
    walk(child, {"hostname": "ca.lab.example"}, stop="network")
    child.expect_exact(QUESTIONS["network"])
    child.sendeof()
    child.expect_exact("interrupted; nothing was changed")
    assert finish(child) == 130
    assert files_under(prefix) == []



def test_enter_at_the_password_prompt_with_a_bad_preset_generates_one_instead_of_failing_at_the_end(tmp_path):
    # Before: Enter returned the bad preset password, and setup exited after all the questions.
    prefix = tmp_path / "root"
    bake(prefix, "hostname: baked.lab.example\nca: {password: Hunter2short}\n")
    child = start_setup(prefix)
    child.expect_exact("The unattended answers could not be used:")
    walk(child, {"dns_names": "baked.lab.example"}, shown={"hostname": "baked.lab.example"}, stop="generate")
    child.expect_exact("The password from the unattended answers can't be used: it needs at least 16 characters")
    walk(child, {"generate": "n"}, start="generate", stop="ssh")
    answer(child, "Password [Enter: generate one after all]: ", "")
    walk(child, start="ssh")
    child.expect_exact("generated, shown once when setup is done")
    answer(child, "Apply? [Y/n]: ", "")
    child.expect_exact("Your CA is ready.")
    child.expect(pexpect.EOF)
    output = child.before
    child.close()
    assert child.exitstatus == 0
    password = (prefix / "etc/step-ca/password.txt").read_text().strip()
    assert len(password) >= 32 and password != "Hunter2short"
    assert "Hunter2short" not in output


def test_escape_sequences_in_a_bad_preset_are_not_sent_to_the_console(tmp_path):
    prefix = tmp_path / "root"
    bake(prefix, 'hostname: baked.lab.example\nca: {name: "Evil\\e[2J CA"}\n')
    child = start_setup(prefix)
    child.expect_exact("The unattended answers could not be used:")
    walk(child, shown={"hostname": "baked.lab.example"}, stop="name")
    child.expect_exact("name your new PKI? (e.g. Lab CA) [Evil\\x1b[2J CA]: ")
    assert "\x1b" not in child.before
    child.sendintr()
    child.expect_exact("interrupted; nothing was changed")
    assert finish(child) == 130


def test_a_preset_of_the_wrong_shape_is_asked_about_not_a_crash(tmp_path):
    prefix = tmp_path / "root"
    bake(prefix, "hostname: baked.lab.example\nca: {dns_names: [1, 2], password: 1234567890123456789}\n")
    child = start_setup(prefix)
    child.expect_exact("The unattended answers could not be used:")
    walk(child, shown={"hostname": "baked.lab.example", "dns_names": "1, 2"}, stop="address")
    child.expect_exact("Not accepted: '1' is neither a DNS name nor an IP address")
    walk(child, {"dns_names": "baked.lab.example"}, start="dns_names", stop="generate")
    child.expect_exact("The password from the unattended answers can't be used: it must be text")
    walk(child, start="generate", stop="admin_key")
    child.expect_exact(QUESTIONS["admin_key"])
    child.sendintr()
    child.expect_exact("interrupted; nothing was changed")
    assert finish(child) == 130
    assert files_under(prefix) == ["etc", "etc/ca-appliance", "etc/ca-appliance/answers.yaml"]
