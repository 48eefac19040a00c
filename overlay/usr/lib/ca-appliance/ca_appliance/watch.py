"""Expiry and health watch: what `ca-appliance watch` (daily timer), `status` and the banner report.

Levels follow the Nagios plugin convention, which `status` also uses as its exit status:
0 ok, 1 warning (the intermediate expires within 90 days, the root within a year, the clock is
more than 1 s off NTP time, the newest backup fails its drill or is older than 30 days),
2 critical (a certificate has expired, step-ca does not answer GET /health, or the clock has not
been NTP-synchronised for a day).
The watch writes each finding to the journal with its priority (`<4>` warning, `<3>` error:
systemd's SyslogLevelPrefix), refreshes the console banner, and exits 0 so the timer's unit
does not fail over a finding it has reported.
"""
import datetime
import json
import sys

from . import banner, clock, pki, stepca, system
from .findings import (  # the findings model, below banner.py too (watch.Finding etc. stay valid names)
    CRITICAL,
    JOURNAL_PRIORITY,
    LEVEL_NAMES,
    OK,
    WARNING,
    Finding,
    days_left,
    expiry_findings,
)


def findings(layout, check_health, now=None, clock_state=None):
    """Every finding about the configured CA (expiry always; step-ca's health when check_health;
    the clock's when clock_state, clock.describe()'s, is given)."""
    config = json.loads(layout.ca_json.read_text())
    result = expiry_findings(pki.load_certificate(config["root"]), pki.load_certificate(config["crt"]), now)
    if clock_state is not None:
        result.extend(clock_findings(clock_state))
    if check_health:
        problem = stepca.health(config, config["root"])
        if problem:
            result.append(Finding(CRITICAL, f"step-ca is not healthy: {problem}"))
        elif (config.get("crl") or {}).get("enabled"):
            result.extend(crl_findings(*stepca.crl(config, config["root"]), now=now))
    return result


def crl_findings(crl, problem, now=None):
    """The CRL step-ca serves: expired is critical (relying parties that check it refuse every
    certificate), past two thirds of its life warns (step-ca renews it at half of it)."""
    now = now or datetime.datetime.now(datetime.UTC)
    if crl is None:
        return [Finding(WARNING, f"the CRL cannot be read from step-ca: {problem}")]
    last, following = pki.crl_updates(crl)
    if following is None:
        return []
    if following <= now:
        return [Finding(CRITICAL, f"the CRL expired at {following:%Y-%m-%d %H:%M} UTC; step-ca renews it "
                                  "while it runs: check `systemctl status step-ca`")]
    if now - last > (following - last) * 2 / 3:
        return [Finding(WARNING, f"the CRL is stale: issued {last:%Y-%m-%d %H:%M} UTC, valid until "
                                 f"{following:%Y-%m-%d %H:%M} UTC (step-ca renews it every 12 h)")]
    return []


def clock_findings(state):
    """clock.describe()'s state: unsynchronised for a day is critical (every certificate carries the
    clock's time), a synchronised clock more than OFFSET_WARN_SECONDS off NTP time warns."""
    unsynchronised = state.get("unsynchronised_seconds")
    if unsynchronised is not None and unsynchronised >= clock.UNSYNCHRONISED_CRITICAL.total_seconds():
        since = f"since {state['last_sync']}" if state.get("last_sync") else "since boot at least"
        return [Finding(CRITICAL, f"the clock has not been NTP-synchronised for {unsynchronised // 86400} days "
                                  f"({since}; it says {state['now']}): check `chronyc sources`, the answers' "
                                  "network.ntp (setup --force to change it) or the hypervisor's clock")]
    offset = state.get("offset_seconds")
    if state.get("synchronised") and offset is not None and abs(offset) > clock.OFFSET_WARN_SECONDS:
        return [Finding(WARNING, f"the clock is {abs(offset):.3f} s {'fast' if offset > 0 else 'slow'} of NTP time "
                                 f"(more than {clock.OFFSET_WARN_SECONDS:g} s; chrony is correcting it): "
                                 "certificates signed now carry the error")]
    return []


def clock_state(now=None):
    """This machine's clock, as status and the watch report it (clock.describe)."""
    return clock.describe(clock.read_facts(), now or clock.now(), clock.seconds_since_boot())


def level(found):
    return max((finding.level for finding in found), default=OK)


def run(layout, check_health, use_system=True, out=sys.stdout):
    """The timer's job: report to the journal, refresh the banner. Returns the level found."""
    on_system = use_system and layout.is_system
    found = findings(layout, check_health, clock_state=clock_state() if on_system else None)
    from . import drill
    drilled, drill_line = drill.watch_drill(layout)   # the newest archive in /var/backups/ca-appliance
    found += [Finding(WARNING, message) for _level, message in drilled]
    prefix = (lambda lvl: "") if out.isatty() else (lambda lvl: JOURNAL_PRIORITY[lvl])
    for finding in found:
        print(f"{prefix(finding.level)}ca-appliance watch: {LEVEL_NAMES[finding.level]}: {finding.message}", file=out)
    if not found:
        config = json.loads(layout.ca_json.read_text())
        now = datetime.datetime.now(datetime.UTC)
        print(f"{prefix(OK)}ca-appliance watch: ok: intermediate expires in "
              f"{days_left(pki.load_certificate(config['crt']), now)} days, root in "
              f"{days_left(pki.load_certificate(config['root']), now)} days"
              + (", step-ca healthy" if check_health else ""), file=out)
    if drill_line:
        print(f"{prefix(OK)}ca-appliance watch: {drill_line}", file=out)
    banner.write(layout, found)
    if on_system:
        system.refresh_console_issue()
    return level(found)
