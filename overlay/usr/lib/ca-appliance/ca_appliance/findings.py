"""What the watch, status and the banner report: a finding (level and message), the levels (the Nagios
plugin convention, also status's exit status) and the certificate-expiry findings. Below watch.py and
banner.py, which both use it (the watch refreshes the banner; the banner shows the findings).
"""
import datetime
from dataclasses import dataclass

from . import pki

OK, WARNING, CRITICAL = 0, 1, 2
LEVEL_NAMES = {OK: "ok", WARNING: "warning", CRITICAL: "critical"}
JOURNAL_PRIORITY = {OK: "<6>", WARNING: "<4>", CRITICAL: "<3>"}
INTERMEDIATE_WARN_DAYS = 90
ROOT_WARN_DAYS = 365


@dataclass
class Finding:
    level: int
    message: str


def days_left(cert, now):
    return (pki.not_after(cert) - now).days


def expiry_findings(root, intermediate, now=None):
    now = now or datetime.datetime.now(datetime.UTC)
    result = []
    for name, cert, warn_days, remedy in (
            ("intermediate", intermediate, INTERMEDIATE_WARN_DAYS, "run `sudo ca-appliance renew-intermediate`"),
            ("root", root, ROOT_WARN_DAYS, "plan a new CA and distribute its root")):
        left = days_left(cert, now)
        expires = pki.not_after(cert).strftime("%Y-%m-%d")
        if left < 0:
            result.append(Finding(CRITICAL, f"the {name} certificate expired on {expires}: {remedy}"))
        elif left < warn_days:
            result.append(Finding(WARNING, f"the {name} certificate expires on {expires} ({left} days left): "
                                           f"{remedy}"))
    return result
