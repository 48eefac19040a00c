"""Facts the builder recorded about this image: /usr/lib/ca-appliance/build.json.

Written by the host's image/payload.py (the only thing that crosses the boundary is this file).
A checkout's overlay has none; then every fact has its default, which is what a test tree gets.
"""
import json
from pathlib import Path

BUILD_INFO_RELATIVE_PATH = Path("usr/lib/ca-appliance/build.json")
PACKAGED_BUILD_INFO = Path(__file__).resolve().parent.parent / "build.json"

DEFAULTS = {
    "name": "ca-appliance",
    "version": "unknown",
    "base": "unknown",
    "step_ca_version": None,      # e.g. "0.30.2"; None when the builder could not tell
    "test_only": False,           # true: not for production (e.g. a step-ca with known vulnerabilities)
    "test_only_reason": None,
    "client_page": True,          # page.enabled: the client page on port 80 (clientpage.py)
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
