"""The lines the host waits for or parses are the ones the appliance prints: both read
overlay/usr/lib/ca-appliance/markers.json. Judged here on what the real CLI writes."""
import re

from ca_appliance import consoles, timing

from image import markers


def test_the_console_banner_setup_writes_is_what_the_boot_tier_parses(make_ca):
    ca = make_ca()
    issue = (ca.prefix / "etc/issue.d/ca-appliance.issue").read_text()
    found = markers.BANNER.search(issue)
    assert found, issue
    assert found.group(1) == f"{ca.url}/acme/acme/directory"
    assert found.group(2).replace(":", "").lower() == re.search(r"[0-9a-f]{64}", ca.setup_output.stdout).group(0)


def test_setup_prints_the_line_verify_cuts_the_power_at(make_ca):
    ca = make_ca()
    assert markers.COMMITTED in ca.setup_output.stdout


def test_the_wizard_offer_and_the_timing_journal_identifier():
    assert markers.wizard_offer("ttyS0") in consoles.BANNER.format(name="ttyS0")
    assert timing.IDENT == markers.TIMING_IDENT
