"""The clock check before a PKI, through the real CLI (issue 25).

The "now" the check compares is always the real clock's; a build.json whose built_at lies in the
future makes that real clock count as "before the image was built", as a hypervisor clock stuck
in 2015 does on the appliance (tests/boot/test_clock_boot.py boots that for real).
"""
import datetime
import json
import os
import subprocess

import pexpect
import pytest
import yaml
from ca_helpers import GUEST_PYTHON, answers_for, free_port, run_cli
from helpers.wizard import CLI, QUESTIONS, files_under, finish, guest_env, walk

EXPECTED_START = "ca-appliance: setup: the clock says "
EXPECTED_REMEDY = "; set network.ntp or fix the hypervisor's clock (it is not NTP-synchronised and is earlier " \
                  "than this image's build"


@pytest.fixture(scope="module", autouse=True)
def host_clock_not_synchronised():
    """On a host whose own clock is NTP-synchronised the check passes by design: nothing to show."""
    probe = subprocess.run([GUEST_PYTHON, "-c",
                            "from ca_appliance import clock; print(clock.read_facts().synchronised)"],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(CLI.parents[1] / "lib/ca-appliance")})
    if probe.stdout.strip() == "True":
        pytest.skip("this host's clock is NTP-synchronised (chronyc/timedatectl say so): setup rightly trusts it")


def build_json(prefix, built_at):
    path = prefix / "usr/lib/ca-appliance/build.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": "ca-appliance", "version": "test", "base": "debian",
                                "built_at": built_at.strftime("%Y-%m-%dT%H:%M:%SZ"), "support_days": 3650}))
    return path


def tomorrow():
    return datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)


def test_unattended_setup_before_the_build_time_stops_with_one_line_and_writes_nothing(tmp_path):
    prefix = tmp_path / "root"
    build_json(prefix, tomorrow())
    before = files_under(prefix)
    answers = tmp_path / "answers.yaml"
    answers.write_text(yaml.safe_dump(answers_for(free_port())))
    result = run_cli("setup", "--prefix", prefix, "--no-system", "--answers", answers, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(EXPECTED_START) and EXPECTED_REMEDY in line, line
    assert "no PKI was created" in line
    assert files_under(prefix) == before   # no key, no ca.json, no state, no staging directory


def test_the_same_setup_goes_ahead_inside_the_build_window_and_status_reports_the_clock(tmp_path):
    prefix = tmp_path / "root"
    build_json(prefix, datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30))
    answers = tmp_path / "answers.yaml"
    answers.write_text(yaml.safe_dump(answers_for(free_port())))
    run_cli("setup", "--prefix", prefix, "--no-system", "--answers", answers)
    status = json.loads(run_cli("status", "--prefix", prefix, "--json", check=False).stdout)
    assert set(status["clock"]) == {"now", "synchronised", "offset_seconds", "reference", "last_sync",
                                    "unsynchronised_seconds", "source"}
    shown = run_cli("status", "--prefix", prefix, check=False).stdout
    assert "\nclock:" in shown


def test_the_wizard_shows_the_time_and_asks(tmp_path):
    prefix = tmp_path / "root"
    build_json(prefix, tomorrow())
    env = guest_env()
    env["TERM"] = "dumb"

    def wizard_until_the_clock_question():
        child = pexpect.spawn(GUEST_PYTHON, [str(CLI), "setup", "--prefix", str(prefix), "--no-system"], env=env,
                              encoding="utf-8", timeout=60, dimensions=(50, 200))
        walk(child, {"hostname": "ca.lab.example", "dns_names": "ca.lab.example"}, stop="admin_key")
        child.expect_exact(QUESTIONS["admin_key"])
        child.sendline("")
        child.expect_exact("Apply? [Y/n]: ")
        child.sendline("")
        child.expect_exact("The clock says ")
        child.expect_exact("Create the CA with this clock anyway? [y/N]: ")
        return child

    child = wizard_until_the_clock_question()
    child.sendline("")   # the default: no
    child.expect_exact("set network.ntp or fix the hypervisor's clock")
    assert finish(child) == 2
    assert files_under(prefix) == ["usr", "usr/lib", "usr/lib/ca-appliance", "usr/lib/ca-appliance/build.json"]

    child = wizard_until_the_clock_question()
    child.sendline("y")   # the person at the console knows better
    child.expect_exact("Your CA is ready.", timeout=120)
    assert finish(child) == 0
    assert (prefix / "etc/step-ca/config/ca.json").exists()
