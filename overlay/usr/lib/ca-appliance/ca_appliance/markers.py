"""The lines the builder's tools wait for or parse (../markers.json, read by the host too)."""
import json
from pathlib import Path

_FILE = Path(__file__).resolve().parent.parent / "markers.json"
_MARKERS = json.loads(_FILE.read_text(encoding="utf-8"))

COMMITTED = _MARKERS["committed"]            # setup: the CA's files are committed (verify cuts the power here)
WIZARD_OFFER = _MARKERS["wizard_offer"]      # format with console=: the first boot's offer on each console
ACME_DIRECTORY = _MARKERS["acme_directory"]  # banner and setup's summary: the ACME URL follows
ROOT_FINGERPRINT = _MARKERS["root_fingerprint"]
TIMING_IDENT = _MARKERS["timing_ident"]      # the journal identifier of setup's per-step durations
