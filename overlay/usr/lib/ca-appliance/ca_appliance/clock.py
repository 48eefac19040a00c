"""The clock a CA signs with (issue 25): what chrony and systemd say of it, and the check before a PKI.

A certificate's validity starts at the signer's "now": a CA whose clock is years off issues
certificates that are not yet valid, or already expired, everywhere else. So setup creates no
PKI unless the clock is NTP-synchronised, or at least plausible: not earlier than the image's
build (build.json built_at) and not later than built_at + support_days. Otherwise it waits a
bounded time for chrony, then stops (unattended) or shows the time and asks (the wizard).

The facts come from `chronyc -c tracking` (chrony is the time service on both bases), else
`timedatectl show -p NTPSynchronized`; the parsers take the commands' text so tests feed them
recorded real outputs. The "now" the check compares is always the real clock's.
"""
import datetime
import subprocess
import time
from dataclasses import dataclass

from .errors import UserError

CHRONYC_TRACKING = ("chronyc", "-n", "-c", "tracking")
TIMEDATECTL_SYNC = ("timedatectl", "show", "-p", "NTPSynchronized")
COMMAND_TIMEOUT = 10
WAIT_SECONDS = 60            # setup: how long chrony gets to synchronise a clock that looks wrong
POLL_SECONDS = 2
OFFSET_WARN_SECONDS = 1.0    # status/watch: a synchronised clock this far off NTP time warns
UNSYNCHRONISED_CRITICAL = datetime.timedelta(days=1)
# A checkout (no build.json, or one from before built_at): nothing is earlier than this code.
EARLIEST_WITHOUT_BUILD = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"
REMEDY = "set network.ntp or fix the hypervisor's clock"


@dataclass(frozen=True)
class ClockFacts:
    synchronised: object            # True / False; None: nothing could tell (no chronyd, no systemd)
    source: str                     # "chronyc", "timedatectl" or "none"
    offset_seconds: object = None   # the system clock minus NTP time (positive: fast); chrony, synchronised
    reference: object = None        # the server chrony follows
    last_sync: object = None        # chrony's last clock update (its reference time), aware UTC


def parse_chronyc_tracking(text):
    """ClockFacts from `chronyc -c tracking` (CSV: reference ID, name, stratum, reference time,
    system time offset (positive: slow), ..., leap status), or None when it is not that."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    if len(lines) != 1:
        return None
    fields = lines[0].split(",")
    if len(fields) != 14:
        return None
    ref_id, name, leap = fields[0], fields[1], fields[13].strip()
    try:
        ref_time, slow_by = float(fields[3]), float(fields[4])
    except ValueError:
        return None
    synchronised = leap != "Not synchronised" and ref_id.strip("0") != ""
    last = datetime.datetime.fromtimestamp(ref_time, datetime.UTC) if ref_time > 0 else None
    return ClockFacts(synchronised=synchronised, source="chronyc",
                      offset_seconds=-slow_by if synchronised else None,
                      reference=(name or None) if synchronised else None, last_sync=last)


def parse_timedatectl(text):
    """ClockFacts from `timedatectl show -p NTPSynchronized` (NTPSynchronized=yes|no), or None."""
    for line in (text or "").splitlines():
        key, _, value = line.strip().partition("=")
        if key == "NTPSynchronized" and value in ("yes", "no"):
            return ClockFacts(synchronised=value == "yes", source="timedatectl")
    return None


def _output(argv):
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def read_facts():
    """What this machine's time service says now: chronyd first, else systemd, else unknown."""
    facts = parse_chronyc_tracking(_output(CHRONYC_TRACKING))
    if facts is None:
        facts = parse_timedatectl(_output(TIMEDATECTL_SYNC))
    return facts or ClockFacts(synchronised=None, source="none")


def now():
    return datetime.datetime.now(datetime.UTC)


def seconds_since_boot(path="/proc/uptime"):
    try:
        with open(path) as handle:
            return float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _parse_time(value):
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def plausible_window(info):
    """(earliest, latest) a clock may say without NTP: the build's built_at and built_at +
    support_days (build.json); a checkout's earliest is EARLIEST_WITHOUT_BUILD."""
    earliest = _parse_time(info.get("built_at")) or EARLIEST_WITHOUT_BUILD
    days = info.get("support_days")
    days = days if type(days) is int and days > 0 else 3650
    return earliest, earliest + datetime.timedelta(days=days)


def clock_problem(current, facts, window):
    """None when a PKI may be made at `current`: synchronised, or inside the window; else the line."""
    if facts.synchronised:
        return None
    earliest, latest = window
    if earliest <= current <= latest:
        return None
    where = (f"earlier than this image's build ({earliest:%Y-%m-%d})" if current < earliest else
             f"later than this image's support window (until {latest:%Y-%m-%d})")
    return (f"the clock says {current.strftime(TIME_FORMAT)}; {REMEDY} (it is not NTP-synchronised and is "
            f"{where}: certificates signed now would carry that time); no PKI was created")


def check_before_pki(info, *, wait_seconds, confirm=None, out=None, read=read_facts, sleep=time.sleep):
    """Setup's gate before it makes keys. Returns the facts it accepted; raises ClockWrong (exit 2).
    wait_seconds: how long to wait for synchronisation when the clock looks wrong (0: not at all).
    confirm(question_text) -> bool: the wizard asks the person (None: unattended, stop)."""
    facts, window = read(), plausible_window(info)
    problem = clock_problem(now(), facts, window)
    if problem is None:
        return facts
    if wait_seconds > 0 and facts.source != "none":
        if out is not None:
            print(f"The clock says {now().strftime(TIME_FORMAT)} and is not NTP-synchronised; waiting up to "
                  f"{wait_seconds} s for chrony to synchronise it...", file=out, flush=True)
        deadline = time.monotonic() + wait_seconds
        while problem is not None and time.monotonic() < deadline:
            sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            facts = read()
            problem = clock_problem(now(), facts, window)
        if problem is None:
            return facts
    if confirm is not None and confirm(f"The clock says {now().strftime(TIME_FORMAT)}, and NTP has not confirmed "
                                       f"it. Certificates this CA signs carry that time ({REMEDY} if it is "
                                       "wrong)."):
        return facts
    raise ClockWrong(f"setup: {problem}")


class ClockWrong(UserError):
    """The clock is not fit to sign with: one line, exit 2."""


def describe(facts, current, uptime):
    """status/watch: a JSON-ready dict of the clock's state (unsynchronised_seconds: since the last
    update, else since boot, the most that is known)."""
    unsynchronised = None
    if facts.synchronised is False or (facts.synchronised and facts.last_sync is not None
                                       and current - facts.last_sync > UNSYNCHRONISED_CRITICAL):
        if facts.last_sync is not None:
            unsynchronised = int((current - facts.last_sync).total_seconds())
        elif uptime is not None:
            unsynchronised = int(uptime)
    return {
        "now": current.strftime(TIME_FORMAT),
        "synchronised": facts.synchronised,
        "offset_seconds": None if facts.offset_seconds is None else round(facts.offset_seconds, 6),
        "reference": facts.reference,
        "last_sync": facts.last_sync.strftime(TIME_FORMAT) if facts.last_sync else None,
        "unsynchronised_seconds": unsynchronised,
        "source": facts.source,
    }


def summary(state):
    """The status row: one line."""
    if state["synchronised"] is None:
        return f"{state['now']}; synchronisation unknown (neither chronyc nor timedatectl answered)"
    if state["unsynchronised_seconds"] is not None:
        return (f"{state['now']}; NOT synchronised for {_duration(state['unsynchronised_seconds'])}"
                + ("" if state["last_sync"] else " (since boot at least)"))
    text = f"{state['now']}; synchronised"
    if state["reference"]:
        text += f" to {state['reference']}"
    if state["offset_seconds"] is not None:
        text += f", offset {state['offset_seconds']:+.6f} s"
    return text


def _duration(seconds):
    if seconds >= 2 * 86400:
        return f"{seconds // 86400} days"
    if seconds >= 3600:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min"


def before_new_pki(prefix, ntp, *, use_system, confirm=None, out=None):
    """setup, before it makes keys: chrony gets the answers' servers (network.ntp), then the clock
    is checked (and, on the appliance, given WAIT_SECONDS to synchronise)."""
    from . import buildinfo, system
    if use_system:
        note = system.configure_chrony(ntp)
        if note and out is not None:
            print(f"note: {note}", file=out)
    return check_before_pki(buildinfo.load(prefix), wait_seconds=WAIT_SECONDS if use_system else 0,
                            confirm=confirm, out=out)
