"""The clock (issue 25): network.ntp in the answers, chrony configured with exactly those servers,
the facts read from chronyc/timedatectl, the check before a PKI and what status and the watch say.

The chronyc outputs are recorded from a real chronyd (tests/fixtures/clock/README.md says how);
`timedatectl show` is a stand-in typed here: systemd is not PID 1 on the build host.
"""
import datetime
import subprocess
from pathlib import Path

import pytest
from ca_appliance import answers, clock, system, watch
from ca_appliance.answers import AnswersError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures/clock"
CLI = Path(__file__).resolve().parents[2] / "overlay/usr/bin/ca-appliance"
UTC = datetime.UTC


def recorded(name):
    return (FIXTURES / name).read_text()


# ---- network.ntp ----

@pytest.mark.parametrize("given, expected", [
    (None, None),
    (["ntp1.lab.example", "192.168.70.1"], ["ntp1.lab.example", "192.168.70.1"]),
    ("NTP1.lab.example., 192.168.70.1, ntp1.lab.example", ["ntp1.lab.example", "192.168.70.1"]),
    (["2001:db8::123"], ["2001:db8::123"]),
    (["ntp"], ["ntp"]),   # a single-label name the site's DNS search domain completes
])
def test_ntp_servers_are_host_names_or_addresses(given, expected):
    assert answers.check_ntp(given) == expected


@pytest.mark.parametrize("given, shown, allowed", [
    ([], "[]", "must list 1 to 8 NTP servers"),
    ([f"ntp{n}.lab.example" for n in range(9)], "['ntp0.lab.example'", "must list 1 to 8 NTP servers"),
    (["ntp_1.lab.example"], "'ntp_1.lab.example'", "is neither a host name nor an IP address"),
    (["pool.ntp.org iburst"], "'pool.ntp.org iburst'", "is neither a host name nor an IP address"),
    (["fe80::1%eth0"], "'fe80::1%eth0'", "IPv6 zone id"),
    ([123], "123", "must list 1 to 8 NTP servers"),
    ({"server": "x"}, "{...}", "must list 1 to 8 NTP servers"),
])
def test_a_bad_ntp_answer_is_one_line_naming_key_value_and_what_is_allowed(defaults, given, shown, allowed):
    with pytest.raises(AnswersError) as caught:
        answers.validate({"network": {"mode": "dhcp", "ntp": given}}, defaults)
    message = str(caught.value)
    assert caught.value.key == "network.ntp" and "\n" not in message
    assert message.startswith(f"answers error: network.ntp: {shown}") and allowed in message


def test_ntp_defaults_to_the_distributions_pool_and_stays_with_a_static_network(defaults):
    assert answers.validate({}, defaults)["network"] == {"mode": "dhcp", "ntp": None}
    static = {"mode": "static", "address": "192.168.70.10/24", "gateway": "192.168.70.1", "dns": ["192.168.70.1"],
              "ntp": "192.168.70.1"}
    assert answers.validate({"network": static}, defaults)["network"]["ntp"] == ["192.168.70.1"]


def test_the_cli_refuses_a_bad_ntp_answer_with_exit_2_and_writes_nothing(tmp_path):
    answers_file = tmp_path / "answers.yaml"
    answers_file.write_text("hostname: ca.lab.example\nnetwork: {mode: dhcp, ntp: [ntp1.lab.example, 'a b']}\n")
    prefix = tmp_path / "root"
    result = subprocess.run(["/usr/bin/python3", str(CLI), "setup", "--prefix", str(prefix), "--no-system",
                             "--answers", str(answers_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("answers error: network.ntp: 'a b' is neither a host name nor an IP address "
                                     "(labels must be 1-63 of a-z, 0-9 and '-', not starting or ending with '-')")
    assert not prefix.exists()


@pytest.fixture
def defaults():
    return answers.load_defaults()


# ---- chrony uses exactly those servers ----

def test_debian_chrony_reads_our_sources_file_and_neither_the_pool_nor_dhcp(tmp_path):
    shipped = recorded("debian-12-chrony.conf")
    files = system.CHRONY["debian"]
    text = system.chrony_conf_text(shipped, ["ntp1.lab.example", "192.168.70.1"], files)
    active = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert not any(line.startswith(("pool", "server")) for line in active)
    assert "sourcedir /etc/chrony/sources.d" in active and "sourcedir /run/chrony-dhcp" not in active
    assert "confdir /etc/chrony/conf.d" in active and "makestep 1 3" in active
    # back to the pool: exactly the shipped file again, and applying twice changes nothing
    assert system.chrony_conf_text(text, None, files) == shipped
    assert system.chrony_conf_text(text, ["ntp1.lab.example", "192.168.70.1"], files) == text


def test_fedora_chrony_conf_gets_the_servers_where_its_pool_line_was():
    shipped = recorded("fedora-chrony.conf")
    files = system.CHRONY["fedora"]
    text = system.chrony_conf_text(shipped, ["ntp1.lab.example", "10.0.0.123"], files)
    active = [line.split(" #")[0] for line in text.splitlines() if line and not line.startswith("#")]
    assert [line for line in active if line.startswith(("pool", "server", "sourcedir"))] == [
        "server ntp1.lab.example iburst", "server 10.0.0.123 iburst"]
    lines = text.splitlines()
    assert lines.index(f"server ntp1.lab.example iburst {system.CHRONY_MARK}") < lines.index(
        system.CHRONY_WAS + "pool 2.fedora.pool.ntp.org iburst")
    assert system.chrony_conf_text(text, ["10.0.0.9"], files) == system.chrony_conf_text(shipped, ["10.0.0.9"], files)
    assert system.chrony_conf_text(text, None, files) == shipped


def test_configure_chrony_writes_the_debian_files_and_removes_them_for_the_pool(tmp_path):
    conf = tmp_path / "etc/chrony/chrony.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(recorded("debian-12-chrony.conf"))
    conf.chmod(0o644)
    sources = tmp_path / "etc/chrony/sources.d/ca-appliance.sources"
    # a unit that does not exist: systemctl try-restart changes nothing (and may not even reach systemd here)
    files = system.ChronyFiles(conf, sources, ("/etc/chrony/sources.d",), "ca-appliance-test-none.service")
    assert system.configure_chrony(["ntp1.lab.example"], files) is None
    assert sources.read_text().splitlines()[1:] == ["server ntp1.lab.example iburst"]
    assert "\npool " not in conf.read_text() and conf.stat().st_mode & 0o777 == 0o644
    system.configure_chrony(None, files)
    assert not sources.exists() and conf.read_text() == recorded("debian-12-chrony.conf")


def test_configure_chrony_says_so_when_there_is_no_chrony(tmp_path):
    files = system.ChronyFiles(tmp_path / "chrony.conf", None, (), "x.service")
    assert system.configure_chrony(["10.0.0.1"], files) == "chrony is not installed: network.ntp was not applied"


# ---- the facts, from recorded real outputs ----

def test_chronyc_synchronised():
    facts = clock.parse_chronyc_tracking(recorded("chronyc-tracking-synchronised.csv"))
    assert facts.synchronised is True and facts.source == "chronyc" and facts.reference == "127.0.0.1"
    assert abs(facts.offset_seconds) < 0.001
    assert facts.last_sync == datetime.datetime(2026, 12, 5, 7, 57, 12, 923141, tzinfo=UTC)


def test_chronyc_three_seconds_slow_is_a_negative_offset():
    facts = clock.parse_chronyc_tracking(recorded("chronyc-tracking-3s-slow.csv"))
    assert facts.synchronised is True and facts.offset_seconds == pytest.approx(-3.0, abs=0.001)


def test_chronyc_unsynchronised():
    facts = clock.parse_chronyc_tracking(recorded("chronyc-tracking-unsynchronised.csv"))
    assert facts.synchronised is False and facts.offset_seconds is None and facts.last_sync is None


@pytest.mark.parametrize("text", ["", "506 Cannot talk to daemon\n", "a,b,c\n"])
def test_no_chronyc_answer_is_no_facts(text):
    assert clock.parse_chronyc_tracking(text) is None


def test_timedatectl_stand_in():
    assert clock.parse_timedatectl("NTPSynchronized=yes\n").synchronised is True
    assert clock.parse_timedatectl("NTPSynchronized=no\n").synchronised is False
    assert clock.parse_timedatectl("Failed to connect to bus: Host is down\n") is None


# ---- the check before a PKI ----

BUILT = {"built_at": "2026-01-10T12:00:00Z", "support_days": 3650}
UNSYNCED = clock.parse_chronyc_tracking(recorded("chronyc-tracking-unsynchronised.csv"))
SYNCED = clock.parse_chronyc_tracking(recorded("chronyc-tracking-synchronised.csv"))


@pytest.mark.parametrize("when, facts, fine", [
    (datetime.datetime(2026, 6, 1, tzinfo=UTC), UNSYNCED, True),          # plausible without NTP
    (datetime.datetime(2015, 1, 1, tzinfo=UTC), UNSYNCED, False),         # QEMU -rtc base=2015-01-01
    (datetime.datetime(2015, 1, 1, tzinfo=UTC), SYNCED, True),            # NTP says so: believed
    (datetime.datetime(2036, 1, 9, tzinfo=UTC), UNSYNCED, False),         # past the support window
    (datetime.datetime(2026, 1, 10, 11, 59, tzinfo=UTC), clock.ClockFacts(None, "none"), False),
])
def test_clock_problem(when, facts, fine):
    problem = clock.clock_problem(when, facts, clock.plausible_window(BUILT))
    assert (problem is None) == fine
    if not fine:
        assert problem.startswith(f"the clock says {when:%Y-%m-%d %H:%M:%S} UTC; set network.ntp or fix the "
                                  "hypervisor's clock")
        assert "\n" not in problem


def test_a_checkout_without_built_at_still_refuses_a_clock_from_before_this_code():
    earliest, latest = clock.plausible_window({})
    assert earliest == clock.EARLIEST_WITHOUT_BUILD and (latest - earliest).days == 3650


def test_the_wizard_is_asked_and_unattended_stops(monkeypatch):
    """The real clock is 'now'; the window is moved past it so the clock counts as before the build."""
    future = {"built_at": (clock.now() + datetime.timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    asked = []
    assert clock.check_before_pki(future, wait_seconds=0, confirm=lambda text: asked.append(text) or True,
                                  read=lambda: UNSYNCED) is UNSYNCED
    assert asked and asked[0].startswith("The clock says ")
    with pytest.raises(clock.ClockWrong) as caught:
        clock.check_before_pki(future, wait_seconds=0, confirm=lambda text: False, read=lambda: UNSYNCED)
    assert caught.value.exit_code == 2
    with pytest.raises(clock.ClockWrong):
        clock.check_before_pki(future, wait_seconds=0, read=lambda: UNSYNCED)


def test_the_check_waits_for_synchronisation_a_bounded_time():
    future = {"built_at": (clock.now() + datetime.timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    answers_ = iter([UNSYNCED, UNSYNCED, SYNCED])
    slept = []
    assert clock.check_before_pki(future, wait_seconds=60, read=lambda: next(answers_),
                                  sleep=slept.append) is SYNCED
    assert len(slept) == 2
    # nothing answers: no time service to wait for, so no waiting
    with pytest.raises(clock.ClockWrong):
        clock.check_before_pki(future, wait_seconds=60, read=lambda: clock.ClockFacts(None, "none"),
                               sleep=lambda s: pytest.fail("waited with no time service"))


# ---- status and the watch ----

def test_findings_offset_warns_and_a_day_unsynchronised_is_critical():
    now = datetime.datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
    slow = clock.describe(clock.parse_chronyc_tracking(recorded("chronyc-tracking-3s-slow.csv")), now, 600)
    assert [(f.level, f.message[:40]) for f in watch.clock_findings(slow)] == [
        (watch.WARNING, "the clock is 3.000 s slow of NTP time (m")]
    good = clock.describe(SYNCED, now, 600)
    assert watch.clock_findings(good) == [] and good["offset_seconds"] == pytest.approx(0, abs=0.001)
    young = clock.describe(UNSYNCED, now, 3600)        # unsynchronised, booted an hour ago
    assert watch.clock_findings(young) == [] and young["unsynchronised_seconds"] == 3600
    old = clock.describe(UNSYNCED, now, 2 * 86400 + 5)  # never synchronised in two days up
    [finding] = watch.clock_findings(old)
    assert finding.level == watch.CRITICAL and "not been NTP-synchronised for 2 days" in finding.message
    stale = clock.describe(SYNCED, now + datetime.timedelta(days=3), 600)   # chrony's last update 3 days ago
    assert watch.clock_findings(stale)[0].level == watch.CRITICAL
    unknown = clock.describe(clock.ClockFacts(None, "none"), now, 10 ** 6)
    assert watch.clock_findings(unknown) == [] and "unknown" in clock.summary(unknown)
    assert clock.summary(good).startswith("2026-12-05 08:00:00 UTC; synchronised to 127.0.0.1, offset ")
