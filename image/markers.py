"""The lines the appliance prints that the builder waits for or parses, from the file the guest
prints them from (overlay/usr/lib/ca-appliance/markers.json): one place for the contract."""
import json
import re

from image.config import GUEST_LIB

_MARKERS = json.loads((GUEST_LIB / "markers.json").read_text(encoding="utf-8"))

COMMITTED = _MARKERS["committed"]
TIMING_IDENT = _MARKERS["timing_ident"]


def wizard_offer(console: str) -> str:
    """What the first boot prints on `console` (e.g. ttyS0) when it offers the wizard there."""
    return _MARKERS["wizard_offer"].format(console=console)


# the console banner and setup's summary: the ACME URL, then the root's fingerprint
BANNER = re.compile(re.escape(_MARKERS["acme_directory"]) + r"\s+(\S+)\s+"
                    + re.escape(_MARKERS["root_fingerprint"]) + r"\s+([0-9A-Fa-f:]{64,95})")
