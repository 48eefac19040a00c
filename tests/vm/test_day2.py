"""Day two on the booted appliance: the watch timer and service, status as a monitoring check,
security updates wired to restart step-ca, and an intermediate renewal with a real reload; after
each command, the CA's owners and modes are the guest table's (layout.OWNERSHIP)."""
import json

import pytest
from ca_appliance.layout import ownership_of
from vm_helpers import described, owner_group_mode

# The CA's trees and state as they must be after every command that writes them: owners and modes from
# the guest's one table (layout.OWNERSHIP), read here on the host from the same source file.
OWNED = "/etc/step-ca /var/lib/step-ca /etc/ca-appliance/state.json"


def assert_owners_and_modes_follow_the_table(host, after):
    """Every path of the CA has the table's owner and mode; the root key (when kept) is root's, 0600."""
    listing = host.run(f"find {OWNED} -printf '%p|%u|%g|%m|%y\\n'")
    assert listing.rc == 0, listing.stderr
    config = json.loads(host.file("/etc/step-ca/config/ca.json").content_string)
    holds_dsn = (config.get("db") or {}).get("type") in ("mysql", "postgresql")
    wrong = []
    for line in listing.stdout.splitlines():
        path, user, group, mode, kind = line.rsplit("|", 4)
        table = ownership_of(path.lstrip("/"), kind == "d", holds_secret=holds_dsn)
        assert table is not None, f"after {after}: {path} is not in the table"
        owner, table_mode = table
        if (user, group, int(mode, 8)) != (owner, owner, table_mode) or kind not in "fd":
            wrong.append(f"{path}: {user}:{group} {mode} {kind}, the table says {owner}:{owner} {table_mode:o}")
    assert not wrong, f"after {after}: " + "; ".join(wrong)
    key = owner_group_mode(host, "/etc/step-ca/secrets/root_ca_key")
    if key is not None:
        assert key == ("root", "root", 0o600), f"after {after}: root_ca_key {described(key)}"


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
    assert_owners_and_modes_follow_the_table(host, "ca-appliance watch")


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
    assert_owners_and_modes_follow_the_table(host, "ca-appliance restart-if-stale")


def test_renew_intermediate_reloads_step_ca_without_a_restart(host):
    if not host.file("/etc/step-ca/secrets/root_ca_key").exists:
        pytest.skip("the root key is offline (root_key: offline): renewal needs --root-key")
    before_pid = host.run("systemctl show -p MainPID --value step-ca").stdout.strip()
    old = host.file("/etc/step-ca/certs/intermediate_ca.crt").content_string
    result = host.run("ca-appliance renew-intermediate")
    assert result.rc == 0, result.stdout + result.stderr
    assert host.file("/etc/step-ca/certs/intermediate_ca.crt").content_string != old
    assert host.file("/etc/step-ca/secrets/intermediate_ca_key").user == "step"
    # issue 21: the renewal gave the whole tree, root key included, to user step
    assert_owners_and_modes_follow_the_table(host, "ca-appliance renew-intermediate")
    assert host.run("systemctl show -p MainPID --value step-ca").stdout.strip() == before_pid  # SIGHUP, not restart
    health = host.run("ca-appliance status --json")
    assert health.rc == 0 and json.loads(health.stdout)["health"] == "ok", health.stdout
