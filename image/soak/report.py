"""soak.json and the table (pure apart from writing the file): every result is recorded as soon as
it is known, so a campaign stopped half-way still leaves what it measured."""
from __future__ import annotations

import json
import threading
from pathlib import Path

from image.files import write_atomic


def survived(entries: list[dict]) -> str:
    """'k/N': how many of the entries passed."""
    return f"{sum(1 for e in entries if e.get('ok'))}/{len(entries)}"


class SoakReport:
    """The results, written to `path` after every change (atomically: a reader never sees half).
    Campaigns run side by side (image.soak.workers): every change holds one lock."""

    def __init__(self, path: str | Path, seed: int, accel: str, image: str | None):
        self.path = Path(path)
        self.data: dict = {"seed": seed, "accel": accel, "image": image, "cuts": [], "op_cuts": []}
        self._lock = threading.RLock()

    def set(self, key: str, value) -> None:
        with self._lock:
            self.data[key] = value
            self.save()

    def add(self, key: str, entry: dict) -> None:
        with self._lock:
            self.data.setdefault(key, []).append(entry)
            self.refresh()

    def refresh(self) -> None:
        """Recompute the survived counts from the entries (cuts in plan order, whichever ended first),
        then save."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        self.data["cuts"].sort(key=lambda e: e.get("index", 0))
        if "power_cuts_planned" in self.data:
            self.data["power_cuts_survived"] = f"{survived(self.data['cuts']).split('/')[0]}/" \
                                               f"{self.data['power_cuts_planned']}"
            self.data["op_cuts_survived"] = survived(self.data["op_cuts"])
        if "disk_full" in self.data:
            self.data["disk_full_survived"] = survived(self.data["disk_full"])
        self.save()

    def save(self) -> None:
        with self._lock:
            write_atomic(self.path, json.dumps(self.data, indent=2, sort_keys=False) + "\n")


def _cell(value) -> str:
    text = "" if value is None else str(value)
    return " ".join(text.split())


def upgrade_rows(upgrade: dict | None) -> list[tuple[str, str, str]]:
    """The upgrade's rows: which previous release, each step's time, each check, and the error if any."""
    if not upgrade:
        return []
    commit = str(upgrade.get("previous_release") or "?")[:12]
    rows = [(f"upgrade from {commit}", "", f"{upgrade.get('seconds', '?')} s in all")]
    for step in upgrade.get("steps", []):
        rows.append((f"upgrade: {step.get('step')}", "done", f"{step.get('seconds')} s"
                     + (" (reused)" if step.get("reused") else "")))
    for check in upgrade.get("checks", []):
        rows.append((f"upgrade: {check.get('check')}", "ok" if check.get("ok") else "FAIL", check.get("detail")))
    if upgrade.get("error"):
        kept = f" [kept: {upgrade['kept']}]" if upgrade.get("kept") else ""
        rows.append(("upgrade", "FAIL", upgrade["error"] + kept))
    return rows


def render_table(data: dict, width: int = 110) -> str:
    """One line per cut, operation, disk-full step and failover run, then the totals."""
    rows: list[tuple[str, str, str]] = []
    for cut in data.get("cuts", []):
        where = f"{cut.get('phase')} (+{cut.get('delay_s')} s after {cut.get('anchor')}; cut in: {cut.get('cut_in')})"
        # a failure's reason first: the table cuts long details short
        rows.append((f"power cut {cut.get('index')}", "ok" if cut.get("ok") else "FAIL",
                     where if cut.get("ok") else f"{cut.get('error')} [{where}]"))
    for cut in data.get("op_cuts", []):
        rows.append((f"cut during {cut.get('op')}", "ok" if cut.get("ok") else "FAIL",
                     f"+{cut.get('delay_s')} s" + ("" if cut.get("ok") else f": {cut.get('error')}")))
    for step in data.get("disk_full", []):
        said = step.get("full_says") or ""
        rows.append((f"disk full: {step.get('op')}", "ok" if step.get("ok") else "FAIL",
                     said if step.get("ok") else f"{step.get('error')} [it said: {said}]"))
    for run in data.get("failover", []):
        rows.append((f"failover on {run.get('database')}", "ok" if run.get("ok") else "FAIL",
                     f"issued {run.get('issued')}, failed {run.get('failed')}, retried {run.get('retried')}, "
                     f"node kills {run.get('kills')}" + ("" if run.get("ok") else f": {run.get('error')}")))
    rows += upgrade_rows(data.get("upgrade"))
    name_width = max([len(r[0]) for r in rows] + [8])
    room = max(width - name_width - 10, 20)
    lines = [f"{'campaign':<{name_width}}  result  detail", f"{'-' * name_width}  ------  ------"]
    for name, result, detail in rows:
        detail = _cell(detail)
        detail = detail if len(detail) <= room else detail[:room - 3] + "..."
        lines.append(f"{name:<{name_width}}  {result:<6}  {detail}".rstrip())
    totals = [f"{key}: {data[key]}" for key in ("power_cuts_survived", "op_cuts_survived", "disk_full_survived",
                                                 "failover_survived", "upgrade_passed") if key in data]
    lines.append("; ".join(totals) if totals else "no campaign ran")
    lines.append(f"seed: {data.get('seed')} (replay with --seed {data.get('seed')})")
    return "\n".join(lines)
