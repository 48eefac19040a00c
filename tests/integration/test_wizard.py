"""The first-boot wizard on a real terminal, through the real CLI, with Debian's own python3.

Each test drives `ca-appliance setup --prefix DIR --no-system` under a pseudo-terminal like a
person at the console would, and checks what lands under DIR.
"""

import json
import os
from pathlib import Path

import pexpect
import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "overlay/usr/bin/ca-appliance"
GUEST_PYTHON = "/usr/bin/python3"  # the oldest target's interpreter (Debian 12), with apt's modules

pytestmark = pytest.mark.skipif(
    not Path(GUEST_PYTHON).exists(), reason=f"{GUEST_PYTHON} (Debian's python3 with python3-yaml) runs the guest CLI"
)

ED25519_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF2pOt2K2QRFWGUOR45v0pfO5z0KpWOzxkTWPjkXuPOl admin@laptop"
PASSWORD = "a long enough password"


def start_setup(prefix):
    env = {key: value for key, value in os.environ.items() if key != "CREDENTIALS_DIRECTORY"}
    env["TERM"] = "dumb"
    child = pexpect.spawn(
        GUEST_PYTHON,
        [str(CLI), "setup", "--prefix", str(prefix), "--no-system"],
        env=env,
        encoding="utf-8",
        timeout=20,
        dimensions=(50, 200),
    )
    return child


def answer(child, question, reply):
    child.expect_exact(question)
    child.sendline(reply)


def finish(child):
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*"))


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
    child.expect_exact("CA names:          ca.lab.example, 192.168.70.10")
    assert PASSWORD not in child.before
    answer(child, "Apply? [Y/n]: ", "n")

    # Start over: every answer given is now the default.
    answer(child, "Host name of this appliance (fully qualified) [ca.lab.example]: ", "")
    answer(child, "Network: dhcp or static? [static]: ", "")
    answer(child, "IPv4 address with prefix length (e.g. 192.168.70.10/24) [192.168.70.10/24]: ", "")
    answer(child, "Gateway [192.168.70.1]: ", "")
    answer(child, "DNS servers (comma-separated) [192.168.70.1]: ", "")
    answer(child, "name your new PKI? (e.g. Lab CA) [Lab CA]: ", "")
    answer(child, "(comma-separated) [ca.lab.example, 192.168.70.10]: ", "")
    answer(child, "listen at? (e.g. :443) [:8443]: ", "")
    answer(child, "first provisioner? (an email) [admin@lab.example]: ", "")
    answer(child, "Generate a random one (shown once, at the end)? [y/N]: ", "")
    answer(child, "Password [Enter: keep the one typed before]: ", "")
    answer(child, "sign SSH host and user certificates? [y/N]: ", "")
    answer(child, "Admin's SSH public key ('none' for console login only) [ssh-ed25519 ...", "")
    child.expect_exact("Please review:")
    assert files_under(tmp_path) == []  # nothing written before the answer to "Apply?"
    answer(child, "Apply? [Y/n]: ", "y")
    child.expect_exact("Your CA is ready.")
    assert finish(child) == 0

    config = ca_json(prefix)
    assert config["dnsNames"] == ["ca.lab.example", "192.168.70.10"]
    assert config["address"] == ":8443"
    assert [p["name"] for p in config["authority"]["provisioners"] if p["type"] == "JWK"] == ["admin@lab.example"]
    assert "ssh" not in config  # SSH CA declined
    assert (prefix / "etc/step-ca/password.txt").read_text().strip() == PASSWORD


def test_generated_password_is_shown_once_after_setup(tmp_path):
    prefix = tmp_path / "root"
    child = start_setup(prefix)
    answer(child, "Host name of this appliance (fully qualified) [", "pki.lab.example")
    answer(child, "Network: dhcp or static? [dhcp]: ", "")
    answer(child, "name your new PKI? (e.g. Lab CA) [Private CA]: ", "")
    answer(child, "(comma-separated) [", "pki.lab.example")
    answer(child, "listen at? (e.g. :443) [:443]: ", "")
    answer(child, "first provisioner? (an email) [admin@ca.internal]: ", "")
    answer(child, "Generate a random one (shown once, at the end)? [Y/n]: ", "")
    answer(child, "sign SSH host and user certificates? [Y/n]: ", "")
    answer(child, "Admin's SSH public key ('none' for console login only) [none]: ", "")
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
    baked = prefix / "etc/ca-appliance/answers.yaml"
    baked.parent.mkdir(parents=True)
    baked.write_text("hostname: baked.lab.example\nca: {name: '', provisioner: ops@lab.example, key_type: DSA}\n")
    child = start_setup(prefix)
    child.expect_exact("The unattended answers could not be used:")
    child.expect_exact("ca.name")
    child.expect_exact("baked")
    answer(child, "Host name of this appliance (fully qualified) [baked.lab.example]: ", "")
    answer(child, "Network: dhcp or static? [dhcp]: ", "")
    answer(child, "name your new PKI? (e.g. Lab CA): ", "   ")
    child.expect_exact("An answer is needed here.")
    answer(child, "name your new PKI? (e.g. Lab CA): ", "Baked CA")
    answer(child, "(comma-separated) [", "baked.lab.example")
    answer(child, "listen at? (e.g. :443) [:443]: ", "")
    answer(child, "first provisioner? (an email) [ops@lab.example]: ", "")
    answer(child, "Generate a random one (shown once, at the end)? [Y/n]: ", "")
    answer(child, "sign SSH host and user certificates? [Y/n]: ", "")
    answer(child, "Admin's SSH public key ('none' for console login only) [none]: ", "")
    # key_type is not asked: its bad preset value falls back to the default, and says so.
    child.expect_exact("Using the default for ca.key_type")
    answer(child, "Apply? [Y/n]: ", "")
    child.expect_exact("Your CA is ready.")
    assert finish(child) == 0
    state = json.loads((prefix / "etc/ca-appliance/state.json").read_text())
    assert state["key_type"] == "EC-P256"
    assert "baked" in state["answers_source"]


@pytest.mark.parametrize("stop_at", ["Host name of this appliance", "Password [", "Apply? [Y/n]: "])
def test_ctrl_c_before_apply_leaves_nothing_under_the_prefix(tmp_path, stop_at):
    prefix = tmp_path / "root"
    prefix.mkdir()
    child = start_setup(prefix)
    replies = {
        "Host name of this appliance (fully qualified) [": "ca.lab.example",
        "Network: dhcp or static? [dhcp]: ": "",
        "name your new PKI? (e.g. Lab CA) [Private CA]: ": "",
        "(comma-separated) [": "ca.lab.example",
        "listen at? (e.g. :443) [:443]: ": "",
        "first provisioner? (an email) [admin@ca.internal]: ": "",
        "Generate a random one (shown once, at the end)? [Y/n]: ": "n",
        "Password [": PASSWORD,
        "Password again: ": PASSWORD,
        "sign SSH host and user certificates? [Y/n]: ": "",
        "Admin's SSH public key ('none' for console login only) [none]: ": "",
        "Apply? [Y/n]: ": "",
    }
    for question, reply in replies.items():
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
    answer(child, "Host name of this appliance (fully qualified) [", "ca.lab.example")
    child.expect_exact("Network: dhcp or static? [dhcp]: ")
    child.sendeof()
    child.expect_exact("interrupted; nothing was changed")
    assert finish(child) == 130
    assert files_under(prefix) == []



def test_enter_at_the_password_prompt_with_a_bad_preset_generates_one_instead_of_failing_at_the_end(tmp_path):
    # Before: Enter returned the bad preset password, and setup exited after all the questions.
    prefix = tmp_path / "root"
    baked = prefix / "etc/ca-appliance/answers.yaml"
    baked.parent.mkdir(parents=True)
    baked.write_text("hostname: baked.lab.example\nca: {password: Hunter2short}\n")
    child = start_setup(prefix)
    child.expect_exact("The unattended answers could not be used:")
    answer(child, "Host name of this appliance (fully qualified) [baked.lab.example]: ", "")
    answer(child, "Network: dhcp or static? [dhcp]: ", "")
    answer(child, "name your new PKI? (e.g. Lab CA) [Private CA]: ", "")
    answer(child, "(comma-separated) [", "baked.lab.example")
    answer(child, "listen at? (e.g. :443) [:443]: ", "")
    answer(child, "first provisioner? (an email) [admin@ca.internal]: ", "")
    child.expect_exact("The password from the unattended answers can't be used: it needs at least 16 characters")
    answer(child, "Generate a random one (shown once, at the end)? [Y/n]: ", "n")
    answer(child, "Password [Enter: generate one after all]: ", "")
    answer(child, "sign SSH host and user certificates? [Y/n]: ", "")
    answer(child, "Admin's SSH public key ('none' for console login only) [none]: ", "")
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
    baked = prefix / "etc/ca-appliance/answers.yaml"
    baked.parent.mkdir(parents=True)
    baked.write_text('hostname: baked.lab.example\nca: {name: "Evil\\e[2J CA"}\n')
    child = start_setup(prefix)
    child.expect_exact("The unattended answers could not be used:")
    answer(child, "Host name of this appliance (fully qualified) [baked.lab.example]: ", "")
    answer(child, "Network: dhcp or static? [dhcp]: ", "")
    child.expect_exact("name your new PKI? (e.g. Lab CA) [Evil\\x1b[2J CA]: ")
    assert "\x1b" not in child.before
    child.sendintr()
    child.expect_exact("interrupted; nothing was changed")
    assert finish(child) == 130


def test_a_preset_of_the_wrong_shape_is_asked_about_not_a_crash(tmp_path):
    prefix = tmp_path / "root"
    baked = prefix / "etc/ca-appliance/answers.yaml"
    baked.parent.mkdir(parents=True)
    baked.write_text("hostname: baked.lab.example\nca: {dns_names: [1, 2], password: 1234567890123456789}\n")
    child = start_setup(prefix)
    child.expect_exact("The unattended answers could not be used:")
    answer(child, "Host name of this appliance (fully qualified) [baked.lab.example]: ", "")
    answer(child, "Network: dhcp or static? [dhcp]: ", "")
    answer(child, "name your new PKI? (e.g. Lab CA) [Private CA]: ", "")
    answer(child, "(comma-separated) [1, 2]: ", "")
    child.expect_exact("Not accepted: '1' is neither a DNS name nor an IP address")
    answer(child, "(comma-separated) [1, 2]: ", "baked.lab.example")
    answer(child, "listen at? (e.g. :443) [:443]: ", "")
    answer(child, "first provisioner? (an email) [admin@ca.internal]: ", "")
    child.expect_exact("The password from the unattended answers can't be used: it must be text")
    answer(child, "Generate a random one (shown once, at the end)? [Y/n]: ", "")
    answer(child, "sign SSH host and user certificates? [Y/n]: ", "")
    child.expect_exact("Admin's SSH public key")
    child.sendintr()
    child.expect_exact("interrupted; nothing was changed")
    assert finish(child) == 130
    assert files_under(prefix) == ["etc", "etc/ca-appliance", "etc/ca-appliance/answers.yaml"]
