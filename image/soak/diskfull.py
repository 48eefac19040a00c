"""The full-disk campaign: fill the appliance's root file system as root, then backup,
renew-intermediate and restore must each fail with one line and leave the CA serving the same root;
once the space is freed, each must succeed."""
from __future__ import annotations

import time

from image.soak import appliance

FILL = "/var/tmp/soak-fill"
PASSPHRASE_FILE = "/root/soak-passphrase"
ARCHIVE = "/var/backups/ca-appliance/soak-diskfull-good.tar.gz"
OPS = {
    "backup": f"ca-appliance backup --out /var/backups/ca-appliance/soak-diskfull.tar.gz "
              f"--passphrase-file {PASSPHRASE_FILE}",
    "renew-intermediate": "ca-appliance renew-intermediate",
    "restore": f"ca-appliance restore {ARCHIVE} --passphrase-file {PASSPHRASE_FILE}",
}
# Every block root may use (reserved ones too), then whatever is left in small pieces.
FILL_COMMAND = (f"fallocate -l $(( $(stat -f -c '%f * %S' /) )) {FILL} 2>/dev/null || true; "
                f"i=0; while [ $i -lt 64 ] && fallocate -l 1M {FILL}.$i 2>/dev/null; do i=$((i+1)); done; "
                f"dd if=/dev/zero of={FILL}.tail bs=4k 2>/dev/null; sync; stat -f -c '%f' /")


def one_line(text: str) -> bool:
    return len([line for line in text.strip().splitlines() if line.strip()]) == 1


def run_disk_full(target, report, say=print) -> None:
    """`target` is a booted appliance whose first boot is done."""
    steps: list[dict] = []
    report.set("disk_full", steps)
    root = appliance.root_fingerprint(target)
    appliance.run(target, f"umask 077; echo soak-passphrase-not-secret-0123456789 > {PASSPHRASE_FILE}")
    rc, out, err = appliance.run(target, f"{OPS['backup'].replace('soak-diskfull.tar.gz', 'soak-diskfull-good.tar.gz')}"
                                         " </dev/null")
    if rc != 0:
        report.add("disk_full", {"op": "backup before filling", "ok": False, "error": (err or out).strip()[:300]})
        return
    _, free_blocks, _ = appliance.run(target, FILL_COMMAND)
    say(f"  disk filled: {free_blocks.strip().splitlines()[-1:]} blocks free")
    full = {}
    for op, command in OPS.items():
        serving_before = target.answers_ca(deadline=time.monotonic() + 15)
        rc, out, err = appliance.run(target, f"{command} </dev/null")
        said = (err or out).strip()
        # a step is blamed only for what it broke: the one before may have left step-ca down
        problems = [] if serving_before else ["(step-ca was already down before this step)"]
        if rc == 0:
            problems.append("succeeded on a full disk (nothing to refuse?)")
        elif not one_line(err or out):
            problems.append(f"said {len(said.splitlines())} lines, not one")
        if serving_before and not target.answers_ca(deadline=time.monotonic() + 60):
            problems.append("step-ca's /health stopped answering")
        fingerprint = appliance.root_fingerprint(target)
        if fingerprint != root:
            problems.append(f"the root changed to {fingerprint}")
        full[op] = {"exit": rc, "said": said.splitlines()[-1] if said else "", "problems": problems}
        say(f"  full disk, {op}: exit {rc}: {full[op]['said'][:150]}")
    appliance.run(target, f"rm -f {FILL} {FILL}.*; sync")
    for op, command in OPS.items():
        rc, out, err = appliance.run(target, f"{command} </dev/null")
        problems = list(full[op]["problems"])
        if rc != 0:
            problems.append(f"fails after freeing space (exit {rc}): {(err or out).strip().splitlines()[-1:]}")
        if not target.answers_ca(deadline=time.monotonic() + 120):
            problems.append("step-ca's /health does not answer after freeing space")
        if appliance.root_fingerprint(target) != root:
            problems.append("the root changed after freeing space")
        entry = {"op": op, "full_exit": full[op]["exit"], "full_says": full[op]["said"], "freed_exit": rc,
                 "ok": not problems, "error": "; ".join(problems) or None}
        say(f"  disk full: {op}: {'ok' if entry['ok'] else 'FAILED: ' + entry['error']}")
        report.add("disk_full", entry)
    left = appliance.strays(target)
    if left:
        report.add("disk_full", {"op": "leftovers", "ok": False, "error": ", ".join(left)})
