"""After OS security updates: restart step-ca when it still runs replaced code.

Debian's unattended-upgrades (apt-daily-upgrade.service) and Fedora's dnf5-automatic
(dnf5-automatic.service) each get a systemd drop-in with `ExecStartPost=-/usr/bin/ca-appliance
restart-if-stale`. Like needrestart and needs-restarting, it looks at what the running process
has mapped: a library or binary that an update replaced shows as "(deleted)" in
/proc/PID/maps. Only then is step-ca restarted (a few seconds without the CA), so a day
without a relevant update costs nothing. One mechanism for both bases.
"""
from pathlib import Path

from . import system
from .layout import SERVICE

PROC = Path("/proc")


def main_pid():
    out = system.run("step-ca main pid", ["systemctl", "show", "--property=MainPID", "--value", SERVICE],
                     check=False).stdout.strip()
    return int(out) if out.isdigit() and int(out) > 0 else None


def stale_files(pid, proc=PROC):
    """Files the process maps that were replaced or removed on disk since it started (sorted)."""
    stale = set()
    try:
        maps = (proc / str(pid) / "maps").read_text(errors="replace")
    except OSError:
        return []
    for line in maps.splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5].endswith(" (deleted)"):
            path = fields[5][:-len(" (deleted)")]
            if not path.startswith(("/memfd:", "/dev/", "/SYSV", "/[aio]")):
                stale.add(path)
    return sorted(stale)


def restart_if_stale(proc=PROC, out=None):
    """Restart step-ca when it maps replaced files; returns them (empty: nothing done)."""
    pid = main_pid()
    if pid is None:
        return []
    stale = stale_files(pid, proc)
    if stale:
        print(f"<5>ca-appliance: step-ca runs replaced files ({', '.join(stale[:5])}); restarting it", file=out)
        system.run("restart step-ca", ["systemctl", "try-restart", SERVICE])
    return stale
