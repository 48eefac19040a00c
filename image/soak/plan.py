"""Where a power cut lands: the first boot's progress lines on the serial console, and the moments
a campaign cuts at (pure: a seeded random.Random in, a list of moments out; replayable with --seed).

The first boot prints, in this order, lines the host can see on the serial console: the kernel's
banner, systemd starting the first-boot unit, setup generating the keys, setup's commit line (from
markers.json, the line `invoke verify` cuts at), systemd starting step-ca, and setup's summary. A
moment is one of those lines plus a random delay; what was really reached when QEMU died is read
back from the console (`reached`), so the record says where the cut landed, not only where it aimed.
"""
from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass

from image import markers

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

# (stage name, the console line that opens it), in boot order
STAGES = (
    ("kernel", re.compile(re.escape("Linux version"))),
    ("setup started", re.compile(r"Starting .*CA appliance first-boot setup\.\.\.")),
    ("key generation", re.compile(re.escape("Generating root and intermediate certificates"))),
    ("committed", re.compile(re.escape(markers.COMMITTED))),
    ("step-ca starting", re.compile(r"Starting .*step-ca")),
    ("step-ca started", re.compile(r"Started .*step-ca")),
    ("setup finished", re.compile(re.escape("Your CA is ready."))),
)
STAGE_NAMES = tuple(name for name, _ in STAGES)


@dataclass(frozen=True)
class Phase:
    """A part of the first boot to cut in: wait for `anchor`'s line, then `low`..`high` seconds more."""
    name: str
    anchor: str
    low: float
    high: float


# Spread over the whole first boot (figures from TCG boots of the Debian image: setup starts ~50 s
# after the kernel, key generation takes ~20 s, the system steps ~20 s).
PHASES = (
    Phase("early boot (before the answers are read)", "kernel", 0.0, 40.0),
    Phase("answers being read", "setup started", 0.0, 4.0),
    Phase("key generation", "key generation", 0.0, 15.0),
    Phase("around the commit", "key generation", 15.0, 30.0),
    Phase("system steps", "committed", 0.0, 15.0),
    # step-ca's start is the last system step: the marker follows it within a second
    Phase("just before the completion marker", "step-ca starting", 0.0, 3.0),
    # setup has said the CA is ready and written its marker: what it wrote must already be on disk (a cut
    # here once left the marker and an empty authorized_keys, locking the admin out)
    Phase("just after setup reported ready", "setup finished", 0.0, 5.0),
)


@dataclass(frozen=True)
class Moment:
    index: int          # 1-based
    phase: str
    anchor: str         # a STAGE_NAMES entry
    delay_s: float      # after the anchor's line appeared

    def as_dict(self) -> dict:
        return asdict(self)


def plan_cuts(count: int, rng: random.Random, phases=PHASES) -> list[Moment]:
    """`count` moments: every phase in turn (a shuffled round each time, so a short campaign still
    spreads), each with its own random delay. The same seed gives the same plan."""
    if count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    moments: list[Moment] = []
    while len(moments) < count:
        round_ = list(phases)
        rng.shuffle(round_)
        for phase in round_[:count - len(moments)]:
            delay = round(rng.uniform(phase.low, phase.high), 2)
            moments.append(Moment(len(moments) + 1, phase.name, phase.anchor, delay))
    return moments


def clean(text: str) -> str:
    """The console's text without colour codes (systemd's status lines are coloured)."""
    return ANSI.sub("", text)


def reached(console_text: str) -> str | None:
    """The last stage whose line is on the console (None: not even the kernel's)."""
    text = clean(console_text)
    last = None
    for name, pattern in STAGES:
        if pattern.search(text):
            last = name
    return last


def stage_seen(console_text: str, stage: str) -> bool:
    """Whether `stage`'s line, or a later stage's, is on the console."""
    last = reached(console_text)
    return last is not None and STAGE_NAMES.index(last) >= STAGE_NAMES.index(stage)


def op_delay(rng: random.Random, window_s: float) -> float:
    """When to cut a running command (backup, restore, renew-intermediate): 0..window seconds in."""
    return round(rng.uniform(0.0, window_s), 2)
