"""Day two on the booted appliance: the watch timer and service, status as a monitoring check,
security updates wired to restart step-ca, and an intermediate renewal with a real reload."""
import json

import pytest


def test_the_watch_timer_is_enabled_and_waiting(host):
    timer = host.service("ca-appliance-watch.timer")
    assert timer.is_enabled, host.run("systemctl status ca-appliance-watch.timer --no-pager").stdout
    assert host.run("systemctl is-active ca-appliance-watch.timer").stdout.strip() == "active"


def test_the_watch_runs_and_reports_ok(host):
    run = host.run("systemctl start ca-appliance-watch.service")
    assert run.rc == 0, run.stderr
    shown = host.run("systemctl show -p Result ca-appliance-watch.service").stdout.strip()
    assert shown == "Result=success"
    journal = host.run("journalctl -u ca-appliance-watch.service -o cat --no-pager -n 20").stdout
    assert "ca-appliance watch: ok:" in journal and "step-ca healthy" in journal
    assert "ACME directory" in host.file("/etc/issue.d/ca-appliance.issue").content_string


def test_status_json_is_a_passing_check(host):
    result = host.run("ca-appliance status --json")
    assert result.rc == 0, result.stdout + result.stderr
    facts = json.loads(result.stdout)
    assert facts["state"] == "ok" and facts["health"] == "ok" and facts["service"] == "active"
    assert facts["intermediate"]["days_left"] > 90


def test_security_updates_restart_step_ca_only_when_needed(host, base):
    unit = "apt-daily-upgrade.service" if base == "debian" else "dnf5-automatic.service"
    post = host.run(f"systemctl show -p ExecStartPost {unit}").stdout
    assert "restart-if-stale" in post, post
    before = host.run("systemctl show -p MainPID --value step-ca").stdout.strip()
    assert host.run("ca-appliance restart-if-stale").rc == 0
    assert host.run("systemctl show -p MainPID --value step-ca").stdout.strip() == before  # nothing was stale


def test_renew_intermediate_reloads_step_ca_without_a_restart(host):
    if not host.file("/etc/step-ca/secrets/root_ca_key").exists:
        pytest.skip("the root key is offline (root_key: offline): renewal needs --root-key")
    before_pid = host.run("systemctl show -p MainPID --value step-ca").stdout.strip()
    old = host.file("/etc/step-ca/certs/intermediate_ca.crt").content_string
    result = host.run("ca-appliance renew-intermediate")
    assert result.rc == 0, result.stdout + result.stderr
    assert host.file("/etc/step-ca/certs/intermediate_ca.crt").content_string != old
    assert host.file("/etc/step-ca/secrets/intermediate_ca_key").user == "step"
    assert host.run("systemctl show -p MainPID --value step-ca").stdout.strip() == before_pid  # SIGHUP, not restart
    health = host.run("ca-appliance status --json")
    assert health.rc == 0 and json.loads(health.stdout)["health"] == "ok", health.stdout
