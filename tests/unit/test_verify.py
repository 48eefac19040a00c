"""verify's pieces that need no VM: answers, the test key, the summary table from a real JUnit file."""
import io
import re
import subprocess
import sys
import textwrap

import pytest
import yaml
from ca_appliance import answers as guest_answers

from image.errors import UserError
from image.vm.verify import (
    CheckResult,
    all_passed,
    ca_port_of,
    default_answers,
    ensure_admin_key,
    load_answers,
    read_junit,
    render_summary,
)


@pytest.fixture
def junit(tmp_path):
    """A JUnit file written by a real pytest run with a pass, a failure, a skip and an error."""
    tests = tmp_path / "test_sample.py"
    tests.write_text(textwrap.dedent("""
        import pytest

        @pytest.fixture
        def broken():
            raise RuntimeError("fixture exploded")

        def test_step_ca_active():
            assert True

        def test_exposure_at_most_2():
            assert 9.6 <= 2.0, "exposure 9.6 is above 2.0"

        def test_selinux_enforcing():
            pytest.skip("SELinux: Debian does not ship it")

        def test_needs_fixture(broken):
            pass
    """))
    out = tmp_path / "junit.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests),
                    f"--junitxml={out}", "-o", "junit_family=xunit1"], cwd=tmp_path, capture_output=True)
    return out


def test_junit_results_are_read_with_their_outcome_and_reason(junit):
    results = {r.name: r for r in read_junit(junit)}
    assert results["test_sample::test_step_ca_active"].outcome == "passed"
    assert results["test_sample::test_exposure_at_most_2"].outcome == "failed"
    assert "exposure 9.6 is above 2.0" in results["test_sample::test_exposure_at_most_2"].message
    assert results["test_sample::test_selinux_enforcing"].outcome == "skipped"
    assert "Debian does not ship it" in results["test_sample::test_selinux_enforcing"].message
    assert results["test_sample::test_needs_fixture"].outcome == "error"


def test_summary_table_shows_every_check_and_the_counts(junit):
    results = read_junit(junit)
    table = render_summary(results)
    lines = table.splitlines()
    assert lines[0].split() == ["result", "check", "detail"]
    assert any(line.startswith("PASS") and "test_step_ca_active" in line for line in lines)
    assert any(line.startswith("FAIL") and "exposure 9.6 is above 2.0" in line for line in lines)
    assert any(line.startswith("SKIP") and "SELinux: Debian does not ship it" in line
               and "Skipped:" not in line for line in lines)
    assert any(line.startswith("ERROR") and "test_needs_fixture" in line for line in lines)
    assert lines[-1] == "1 passed, 1 failed, 1 error, 1 skipped"
    assert not all_passed(results)


def test_long_details_are_cut_to_the_table_width():
    table = render_summary([CheckResult("t::a", "failed", "x" * 500)], width=80)
    assert max(len(line) for line in table.splitlines()) <= 80


def test_skips_alone_pass_but_no_checks_at_all_do_not():
    assert all_passed([CheckResult("a", "passed"), CheckResult("b", "skipped", "why")])
    assert not all_passed([])
    assert render_summary([]).splitlines()[-1] == "no checks ran"


def test_default_answers_are_valid_for_the_guest(tmp_path):
    """The answers verify sends must pass the guest's own validator (one source of truth)."""
    key_file = ensure_admin_key(tmp_path)
    public = key_file.with_suffix(".pub").read_text().strip()
    raw = default_answers(public, "correct horse battery staple 0123456789")
    valid = guest_answers.validate(yaml.safe_load(yaml.safe_dump(raw)), guest_answers.load_defaults())
    assert valid["hostname"] == "ca.verify.test"
    assert valid["ca"]["dns_names"][:2] == ["ca.verify.test", "localhost"]
    assert valid["admin"]["ssh_authorized_keys"] == [public]


def test_the_admin_key_is_made_once_and_private(tmp_path):
    key_file = ensure_admin_key(tmp_path)
    first = key_file.read_bytes()
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.with_suffix(".pub").read_text().startswith("ssh-ed25519 ")
    assert ensure_admin_key(tmp_path).read_bytes() == first


def test_a_users_answers_file_gets_the_test_key_added(tmp_path):
    path = tmp_path / "answers.yaml"
    path.write_text("hostname: ca.lab.example\nca: {address: ':8443'}\n"
                    "admin: {ssh_authorized_keys: ['ssh-ed25519 AAAAmine me@laptop']}\n")
    answers = load_answers(path, "ssh-ed25519 AAAAtest verify")
    assert answers["admin"]["ssh_authorized_keys"] == ["ssh-ed25519 AAAAmine me@laptop", "ssh-ed25519 AAAAtest verify"]
    assert ca_port_of(answers) == 8443


def test_generated_answers_carry_a_password_so_the_jwk_flow_can_decrypt():
    a, b = load_answers(None, "ssh-ed25519 AAAA k"), load_answers(None, "ssh-ed25519 AAAA k")
    assert len(a["ca"]["password"]) >= 24 and a["ca"]["password"] != b["ca"]["password"]


def test_answers_without_a_hostname_or_with_a_bad_address_name_the_problem(tmp_path):
    path = tmp_path / "answers.yaml"
    path.write_text("ca: {name: X}\n")
    with pytest.raises(UserError, match="no hostname"):
        load_answers(path, "ssh-ed25519 AAAA k")
    path.write_text("hostname: a.example\nca: {address: 'port443'}\n")
    with pytest.raises(UserError, match=r"ca.address 'port443'"):
        load_answers(path, "ssh-ed25519 AAAA k")


def test_the_wizard_script_answers_the_real_wizard_including_one_refused_reply(tmp_path):
    """verify's console script against the guest's own wizard: each reply is typed only after a
    prompt matched, the wrong host name is refused and asked again, and the result is our answers."""
    from ca_appliance.wizard import run_wizard

    from image.vm.verify import wizard_script
    public = ensure_admin_key(tmp_path).with_suffix(".pub").read_text().strip()
    answers = default_answers(public, "a long enough password for the test 123")
    offer, *script = wizard_script(answers)
    from ca_appliance.consoles import BANNER
    assert re.search(offer[0], BANNER.format(name="ttyS0")) and offer[1] == ""  # consoles.py's own offer
    transcript, position, replies = io.StringIO(), [0], []

    def person(prompt=""):
        transcript.write(prompt)
        text = transcript.getvalue()[position[0]:]
        pattern, reply = script.pop(0)
        match = re.search(pattern, text, re.DOTALL)
        assert match, f"no prompt matching {pattern!r} in {text!r}"
        assert match.end() == len(text), "the reply would be typed before the prompt is complete"
        position[0] += match.end()
        replies.append(reply)
        return reply

    result = run_wizard(guest_answers.load_defaults(), input=person, output=transcript, getpass=person)
    assert replies[0] == "not a host name!" and replies[1] == "ca.verify.test"
    assert "Not accepted: 'not a host name!'" in transcript.getvalue()
    assert script == []
    assert result["hostname"] == "ca.verify.test"
    assert result["ca"]["name"] == "Verify CA"
    assert result["ca"]["dns_names"] == ["ca.verify.test", "localhost", "127.0.0.1", "10.0.2.15"]
    assert result["ca"]["password"] == answers["ca"]["password"]
    assert result["admin"]["ssh_authorized_keys"] == answers["admin"]["ssh_authorized_keys"]
