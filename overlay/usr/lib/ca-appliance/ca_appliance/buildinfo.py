"""Facts the builder recorded about this image: /usr/lib/ca-appliance/build.json.

Written by the host's image/payload.py (the only thing that crosses the boundary is this file).
A checkout's overlay has none; then every fact has its default, which is what a test tree gets.
"""
import json
import re
from pathlib import Path

BUILD_INFO_RELATIVE_PATH = Path("usr/lib/ca-appliance/build.json")
PACKAGED_BUILD_INFO = Path(__file__).resolve().parent.parent / "build.json"

DEFAULTS = {
    "name": "ca-appliance",
    "version": "unknown",
    "base": "unknown",
    "step_ca_version": None,      # e.g. "0.30.2"; None when the builder could not tell
    "test_only": False,           # true: not for production (e.g. a step-ca with known vulnerabilities);
                                  # false alone proves nothing: see test_image_reason (fails closed)
    "test_only_reason": None,
    "client_page": True,          # page.enabled: the client page on port 80 (clientpage.py)
    # The clock check before a PKI (clock.py): a clock not NTP-synchronised must say a time from
    # built_at (ISO 8601 UTC; None: a checkout, clock.EARLIEST_WITHOUT_BUILD) to built_at + support_days.
    "built_at": None,
    "support_days": 3650,
}


def load(prefix=None):
    """build.json under PREFIX when it has one, else the one packaged beside this code, over DEFAULTS."""
    candidates = [Path(prefix) / BUILD_INFO_RELATIVE_PATH] if prefix is not None else []
    candidates.append(PACKAGED_BUILD_INFO)
    for path in candidates:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            return {**DEFAULTS, **data}
    return dict(DEFAULTS)


# step-ca before 0.29.0 has GHSA-h8cp-697h-8c8p (ACME/SCEP authorization bypass); the host's
# image/stepca_version.py holds the same line for the build (tests/unit tie the two).
FIXED_IN = (0, 29, 0)
ADVISORY = "GHSA-h8cp-697h-8c8p (ACME/SCEP authorization bypass, fixed in step-ca 0.29.0)"
TEST_IMAGE_MARK = "TEST IMAGE - not for production"


def test_image_reason(info, installed_version=None):
    """Why this appliance is a test image, or None when it is not. Fails closed: unless the build
    did not mark it AND a step-ca version is known (the installed binary's, else the build's) AND
    that version is 0.29.0 or later, it is a test image."""
    if info.get("test_only"):
        return info.get("test_only_reason") or "the build marked this image as a test image"
    version = installed_version or info.get("step_ca_version")
    match = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)", str(version or ""))
    if match is None:
        return (f"the step-ca version could not be read, so it may lack the fix for {ADVISORY}; "
                "a test image, not for production")
    if tuple(int(part) for part in match.groups()) < FIXED_IN:
        return f"step-ca {version} is older than 0.29.0: {ADVISORY}; a test image, not for production"
    return None
