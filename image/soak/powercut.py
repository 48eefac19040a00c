"""The power-cut campaign: SIGKILL QEMU at planned moments of a fresh first boot, boot the same disk
again, check the appliance; then cut a running appliance during backup, restore and
renew-intermediate. Each result goes into the report as soon as it is known."""
from __future__ import annotations

import functools
import random
import re
import threading
import time
from pathlib import Path

from image.errors import StepFailed
from image.soak import appliance, plan

SERIAL_FINGERPRINT = re.compile(r"Root fingerprint:\s+([0-9A-Fa-f:]{64,95})")
PASSPHRASE_FILE = "/root/soak-passphrase"
GOOD_ARCHIVE = "/var/backups/ca-appliance/soak-good.tar.gz"
CUT_ARCHIVE = "/var/backups/ca-appliance/soak-cut.tar.gz"
OPS = {
    "backup": f"ca-appliance backup --out {CUT_ARCHIVE} --passphrase-file {PASSPHRASE_FILE}",
    "restore": f"ca-appliance restore {GOOD_ARCHIVE} --passphrase-file {PASSPHRASE_FILE}",
    "renew-intermediate": "ca-appliance renew-intermediate",
}


def printed_fingerprints(console_text: str) -> set[str]:
    """Every root fingerprint the appliance printed on its console (setup's summary, the banner)."""
    return {m.replace(":", "").lower() for m in SERIAL_FINGERPRINT.findall(plan.clean(console_text))}


def what_the_rerun_did(console_after_cut: str) -> str:
    text = plan.clean(console_after_cut)
    if "finishing its system steps" in text:
        return "finished the committed CA's system steps"
    if "Generating root and intermediate certificates" in text:
        return "created the CA (nothing had been committed)"
    return "nothing left to do (setup had finished)"


def _wait_for_stage(target, stage: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not plan.stage_seen(target.vm.serial_log.read_text(errors="replace"), stage):
        target.vm.check_alive(f"first boot (waiting for {stage!r} on the console)")
        if time.monotonic() > deadline:
            raise StepFailed("first boot", f"no {stage!r} line on the console within {timeout:.0f}s",
                             target.vm.serial_log)
        time.sleep(0.05)   # the last stages are a second apart


def _sleep_alive(target, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        target.vm.check_alive("first boot (before the cut)")
        time.sleep(min(0.2, max(0.0, end - time.monotonic())))


def cut_one(target, moment: plan.Moment, say=print) -> dict:
    """Boot fresh, cut at `moment`, boot again, check. The entry for the report (ok, where it landed)."""
    entry = moment.as_dict()
    started = time.monotonic()
    target.vm.start()
    _wait_for_stage(target, moment.anchor, target.ssh_timeout + target.ready_timeout)
    _sleep_alive(target, moment.delay_s)
    console = target.vm.serial_log.read_text(errors="replace")
    entry["cut_in"] = plan.reached(console)
    entry["cut_at_s"] = round(time.monotonic() - started, 1)
    target.forget_connection()
    target.vm.kill()
    target.first_boot_cut = True
    say(f"  cut {moment.index}: {entry['cut_at_s']} s into the first boot, in {entry['cut_in']!r}; booting again")
    offset = len(console)
    target.vm.start()
    target.wait_ready("after the cut")
    entry["ready_after_cut_s"] = round(target.boot_times["after the cut"][1], 1)
    after = target.vm.serial_log.read_text(errors="replace")[offset:]
    entry["rerun"] = what_the_rerun_did(after)
    fingerprint, problems = appliance.check_after_cut(target, target.workdir / "junit.xml")
    entry["root_fingerprint"] = fingerprint
    others = printed_fingerprints(target.vm.serial_log.read_text(errors="replace")) - {fingerprint}
    if others:
        problems.append("the console printed another root: " + ", ".join(sorted(others)))
    entry["ok"], entry["error"] = not problems, "; ".join(problems) or None
    return entry


def _start_in_background(target, command: str) -> None:
    """Run `command` as root in the guest, detached; its output and exit status go to /root/soak-op.*."""
    inner = f"{command} </dev/null >/root/soak-op.log 2>&1; echo $? >/root/soak-op.rc"
    rc, out, err = appliance.run(target, f"rm -f /root/soak-op.rc; setsid nohup sh -c '{inner}' "
                                         ">/dev/null 2>&1 </dev/null &")
    if rc != 0:
        raise StepFailed("start the command in the guest", (err or out).strip()[:300])


def _timed_run(target, command: str) -> tuple[int, float, str]:
    start = time.monotonic()
    rc, out, err = appliance.run(target, f"{command} </dev/null")
    return rc, time.monotonic() - start, (err or out).strip()


def cut_op(target, op: str, rng: random.Random, root: str, say=print) -> dict:
    """Run `op` whole once (timed), then again and cut the power 0..that long into it; boot and check."""
    entry: dict = {"op": op}
    rc, duration, said = _timed_run(target, OPS[op])
    entry["uncut_run"] = {"exit": rc, "seconds": round(duration, 1)}
    if rc != 0:
        entry.update(ok=False, error=f"{op} failed before any cut (exit {rc}): {said.splitlines()[-1:]}")
        return entry
    if op == "backup":
        appliance.run(target, f"rm -f {CUT_ARCHIVE}")
    entry["delay_s"] = plan.op_delay(rng, duration)
    _start_in_background(target, OPS[op])
    time.sleep(entry["delay_s"])
    target.forget_connection()
    target.vm.kill()
    say(f"  cut during {op}, {entry['delay_s']} s in (it takes {duration:.0f} s uncut); booting again")
    target.vm.start()
    target.wait_ready(f"after a cut during {op}")
    entry["finished_before_cut"] = appliance.run(target, "cat /root/soak-op.rc 2>/dev/null")[1].strip() or None
    fingerprint, problems = appliance.check_after_cut(target, target.workdir / "junit.xml", expect_root=root)
    if op == "backup":
        exists = appliance.run(target, f"test -e {CUT_ARCHIVE}")[0] == 0
        entry["archive_after_cut"] = "present" if exists else "absent"
        if exists:
            rc, out, err = appliance.run(target, f"ca-appliance backup --verify {CUT_ARCHIVE} "
                                                 f"--passphrase-file {PASSPHRASE_FILE}")
            if rc != 0:
                problems.append(f"the archive left by the cut backup does not verify: {(err or out).strip()[:200]}")
        appliance.run(target, f"rm -f {CUT_ARCHIVE}")
    rc, _, said = _timed_run(target, OPS[op])
    entry["rerun_exit"] = rc
    if rc != 0:
        problems.append(f"{op} fails after the cut (exit {rc}): {said.splitlines()[-1:] }")
    entry["ok"], entry["error"] = not problems, "; ".join(problems) or None
    return entry


def run_order(moments: list[plan.Moment]) -> list[plan.Moment]:
    """The cuts that come latest in the first boot (the longest jobs) first, the early-boot ones last:
    VMs side by side end together instead of one long cut running alone at the end. The report keeps
    the plan's order."""
    return sorted(moments, key=lambda m: (plan.STAGE_NAMES.index(m.anchor), m.delay_s, -m.index), reverse=True)


class PowerCuts:
    """The campaign as jobs for image.soak.workers: one per planned cut, each on a VM of its own. The
    first cut that survives keeps its VM, and the command cuts (backup, restore, renew-intermediate)
    run on it next, then `then(target)` (the full disk: the same running appliance serves it);
    `then(None)` when no appliance is left for it. Every random choice is drawn here, up front, so
    the same seed gives the same campaign whichever cut ends first."""

    def __init__(self, image: Path, cfg, accel: str, count: int, rng: random.Random, report, workers,
                 cpus: int, say=print, then=None):
        self.image, self.cfg, self.accel, self.report, self.workers, self.say = image, cfg, accel, report, workers, say
        self.cpus = cpus
        self.moments = plan.plan_cuts(count, rng)
        self.op_rng = random.Random(rng.randrange(2**32))
        self.then = then
        self._claimed = False
        self._lock = threading.Lock()

    def start(self) -> None:
        self.report.set("power_cuts_planned", len(self.moments))
        self.say(f"power cuts: {len(self.moments)} planned, {self.workers.workers} VM(s) at a time, "
                 f"{self.cpus} vCPU(s) each: "
                 + ", ".join(f"{m.index}: {m.phase} +{m.delay_s}s" for m in self.moments))
        for moment in run_order(self.moments):
            self.workers.add(functools.partial(self.cut, moment))

    def cut(self, moment: plan.Moment) -> None:
        target = appliance.new_target(self.image, appliance.SOAK_DIR / f"cut-{moment.index}", self.cfg,
                                      self.accel, self.say, cpus=self.cpus)
        self.workers.live(target)
        try:
            entry = cut_one(target, moment, self.say)
        except Exception as e:  # noqa: BLE001 - one cut's failure is a result, the campaign goes on
            entry = {**moment.as_dict(), "ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
        self.say(f"  cut {moment.index}: {'survived' if entry['ok'] else 'FAILED: ' + str(entry['error'])}")
        survivor = False
        if not entry["ok"]:
            entry["kept"] = str(appliance.keep_for_inspection(target, f"cut-{moment.index}", self.say))
        else:
            with self._lock:
                survivor, self._claimed = not self._claimed, True
            if survivor:
                self.workers.add(functools.partial(self.commands, target), first=True)
            else:
                appliance.discard(target)
        if not survivor:
            self.workers.gone(target)
        self.report.add("cuts", entry)

    def commands(self, target) -> None:
        """The command cuts on the surviving appliance, then `then` on it (or on None if it broke)."""
        try:
            ok = run_op_cuts(target, self.op_rng, self.report, self.say)
            if self.then is not None:
                self.then(target if ok else None)
        finally:
            appliance.discard(target)
            self.workers.gone(target)

    def finish(self) -> None:
        """After the workers: what could not run for want of a surviving appliance."""
        if self.moments and not self._claimed:
            self.say("  the cuts during backup, restore and renew-intermediate need a surviving appliance: none")
            if self.then is not None:
                self.then(None)


def run_op_cuts(target, rng: random.Random, report, say=print) -> bool:
    """Cut the power during each command in turn; True when every one survived and the VM still serves."""
    root = appliance.served_root_fingerprint(target)
    appliance.run(target, f"umask 077; echo soak-passphrase-not-secret-0123456789 > {PASSPHRASE_FILE}")
    rc, duration, said = _timed_run(target, f"ca-appliance backup --out {GOOD_ARCHIVE} "
                                            f"--passphrase-file {PASSPHRASE_FILE}")
    if rc != 0:
        report.add("op_cuts", {"op": "backup (the archive restore uses)", "ok": False,
                               "error": f"exit {rc}: {said[-300:]}"})
        return False
    for op in OPS:
        try:
            entry = cut_op(target, op, rng, root, say)
        except Exception as e:  # noqa: BLE001 - recorded; the VM may be unusable for the next op
            entry = {"op": op, "ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
        say(f"  cut during {op}: {'survived' if entry['ok'] else 'FAILED: ' + str(entry['error'])}")
        if not entry["ok"]:
            entry["kept"] = str(appliance.keep_for_inspection(target, f"cut-during-{op}", say))
        report.add("op_cuts", entry)
        if not entry["ok"]:
            return False
    return True
