"""`invoke soak`: the campaigns, the seed, the report and the table."""
from __future__ import annotations

import random
import time
from pathlib import Path

from image.bench.bench import parse_count, parse_seconds
from image.config import load_config
from image.errors import UserError
from image.soak import appliance, workers
from image.soak.report import SoakReport, render_table

DEFAULT_CUTS = 20


def parse_seed(value) -> int:
    if value is None or str(value).strip() == "":
        return time.time_ns() % 2**32
    try:
        return int(str(value).strip())
    except ValueError:
        raise UserError(f"--seed: {value!r} is not a whole number") from None


def campaigns(power_cuts, disk_full: bool, failover: bool, upgrade: bool = False) -> dict:
    """What runs: the campaigns named; none named: power cuts (DEFAULT_CUTS), disk full and failover
    (the upgrade builds a second, older image: only when asked for, with --upgrade)."""
    if power_cuts is None and not disk_full and not failover and not upgrade:
        return {"power_cuts": DEFAULT_CUTS, "disk_full": True, "failover": True, "upgrade": False}
    cuts = 0 if power_cuts is None else parse_count("--power-cuts", power_cuts, minimum=0)
    if not cuts and not disk_full and not failover and not upgrade:
        raise UserError("--power-cuts: 0 and neither --disk-full, --failover nor --upgrade: nothing to run")
    return {"power_cuts": cuts, "disk_full": bool(disk_full), "failover": bool(failover), "upgrade": bool(upgrade)}


def _image(image) -> Path:
    if image:
        path = Path(image)
        if not path.is_file():
            raise UserError(f"--image: {str(path)!r} does not exist (give a built .qcow2 image)")
        return path.resolve()
    from image.build import build_appliance, output_stem
    from image.stepbuild import pinned_binaries
    # the pinned step-ca and step, built from their Go modules (cached), as bench and make test use:
    # the default artifacts come from GitHub releases, which a build machine may not reach
    artifacts = {key: {"path": str(path)} for key, path in pinned_binaries().items()}
    cfg = load_config(overrides={"image": {"base": "debian", "formats": ["qcow2"]}, "artifacts": artifacts})
    dist = appliance.SOAK_DIR / "dist"
    build_appliance(cfg, formats=["qcow2"], dist_dir=dist, build_dir=appliance.SOAK_DIR / "work")
    return dist / f"{output_stem(cfg)}.qcow2"


def run_soak(image=None, accel="auto", out="build/soak.json", power_cuts=None, disk_full=False, failover=False,
             seconds="300", seed=None, upgrade=False, parallel="auto", vm_cpus="auto", say=print) -> bool:
    """The campaigns chosen; the VM ones `parallel` VMs at a time (`vm_cpus` vCPUs each), the failover
    (host processes in a network namespace of their own) beside them from the start."""
    chosen = campaigns(power_cuts, disk_full, failover, upgrade)
    seed_value = parse_seed(seed)
    run_seconds = parse_seconds("--seconds", seconds)
    cfg = load_config()
    slots = workers.parse_workers(parallel, memory_mb=workers.host_memory_mb(), vm_memory_mb=cfg.image.memory_mb)
    cpus = workers.parse_vm_cpus(vm_cpus, cfg.image.cpus, slots)
    needs_vm = chosen["power_cuts"] or chosen["disk_full"] or chosen["upgrade"]
    accel_name = "none"
    if needs_vm:
        from image.vm.qemu import resolve_accel
        choice = resolve_accel(accel)
        accel_name = choice.accel
        say(f"accelerator: {choice.accel} ({choice.reason})")
    image_path = _image(image) if needs_vm else None
    say(f"seed: {seed_value} (replay with --seed {seed_value})")
    report = SoakReport(out, seed_value, accel_name, str(image_path) if image_path else None)
    report.set("campaigns", chosen)
    report.set("parallel_vms", slots)
    report.set("vm_cpus", cpus)
    rng = random.Random(seed_value)
    # every random draw in this order, whatever runs side by side later: the same seed, the same campaign
    failover_seed = rng.randrange(2**32)
    pool = workers.Workers(slots)
    started = time.monotonic()
    background = None
    try:
        if chosen["failover"]:
            from image.soak.failover import start_failover
            background = start_failover(run_seconds, failover_seed, say)
        cuts = None
        full_disk = (lambda target: _disk_full(target, image_path, cfg, accel_name, report, pool, say, cpus)) \
            if chosen["disk_full"] else None
        if chosen["power_cuts"]:
            from image.soak.powercut import PowerCuts
            cuts = PowerCuts(image_path, cfg, accel_name, chosen["power_cuts"], rng, report, pool, cpus, say,
                             then=full_disk)
            cuts.start()
        elif full_disk is not None:
            pool.add(lambda: full_disk(None))
        pool.run()
        if cuts is not None:
            cuts.finish()
        if background is not None:
            background.finish(report)
            background = None
        if chosen["upgrade"]:
            from image.soak.upgrade import Upgrade
            say("upgrade from the previous image:")
            Upgrade(image_path, cfg, accel_name, report, say).run()
    finally:
        if background is not None:
            background.stop()
        report.set("duration_s", round(time.monotonic() - started, 1))
        say("\n" + render_table(report.data))
        say(f"results: {report.path}")
    return _all_ok(report.data)


def _disk_full(target, image_path, cfg, accel, report, pool, say, cpus: int) -> None:
    """On `target` (a running appliance the power cuts leave), or on a fresh one of its own."""
    from image.soak.diskfull import run_disk_full
    say("full disk: on " + ("the appliance the command cuts used" if target is not None else "a fresh appliance"))
    own = target is None
    failed = True
    try:
        if own:
            target = appliance.new_target(image_path, appliance.SOAK_DIR / "disk-full", cfg, accel, say, cpus=cpus)
            pool.live(target)
            target.vm.start()
            target.wait_ready("first boot")
        run_disk_full(target, report, say)
        failed = not all(step.get("ok") for step in report.data.get("disk_full", []))
    except Exception as e:  # noqa: BLE001 - recorded, the VM kept
        report.add("disk_full", {"op": "boot and fill", "ok": False, "error": f"{type(e).__name__}: {e}"[:400]})
    finally:
        if target is not None and failed:
            appliance.keep_for_inspection(target, "disk-full", say)
        elif own:
            appliance.discard(target)
        if own and target is not None:
            pool.gone(target)


def _all_ok(data: dict) -> bool:
    entries = [*data.get("cuts", []), *data.get("op_cuts", []), *data.get("disk_full", []), *data.get("failover", [])]
    results = [bool(e.get("ok")) for e in entries]
    if "upgrade_passed" in data:
        results.append(data["upgrade_passed"] is True)
    return bool(results) and all(results)
