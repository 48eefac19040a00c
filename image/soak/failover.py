"""The failover soak: two CA nodes (the guest CLI's `setup` and `join` under --prefix, each served
by the pinned step-ca as a host process) on one MariaDB, and two more on one PostgreSQL, each pair
behind a round-robin proxy; certbot and acme-tiny issue without pause for --seconds while one node
of a pair at a time is SIGKILLed and restarted. Counted: issued, failed, retried; checked: no serial
twice, both ACME accounts still there and usable, every failed client issuing again afterwards.

The two databases' clusters run at the same time (their clients answer http-01 from one shared
webroot: the tokens are unique), so the campaign holds the machine's cores for --seconds, not twice
that, beside the VMs of the other campaigns.

It runs in a network namespace of its own (`unshare -n`, root): http-01 needs 127.0.0.1:80, and
this way nothing else on the machine (a test run binding port 80) is disturbed, nor disturbs it."""
from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from image.config import PROJECT_ROOT
from image.errors import StepFailed
from image.soak.appliance import SOAK_DIR
from image.soak.clients import AcmeTiny, Certbot, ChallengeServer, Tally, issue_until
from image.soak.cluster import RoundRobinProxy, database_server
from image.soak.nodes import Node
from image.vm.qemu import free_port

KINDS = ("mysql", "postgresql")
DB_USER, DB_PASSWORD, DB_NAME = "stepca_soak", "soak-db-password-not-secret-42", "stepca"


def kill_plan(seconds: float, rng: random.Random, nodes: int = 2) -> list[dict]:
    """When to kill which node and for how long: at least two kills, one per ~20 s, spread over the run
    (each in its own slice, at a random point of the slice's middle half)."""
    count = max(2, int(seconds // 20))
    slice_s = seconds / count
    plan = []
    for i in range(count):
        at = round(slice_s * (i + rng.uniform(0.25, 0.75)), 2)
        plan.append({"at_s": at, "node": i % nodes, "down_s": round(rng.uniform(1.0, min(8.0, slice_s / 3)), 2)})
    return plan


def duplicates(serials: list[int]) -> list[int]:
    seen, twice = set(), set()
    for serial in serials:
        (twice if serial in seen else seen).add(serial)
    return sorted(twice)


def _killer(nodes: list[Node], plan: list[dict], started: float, stop: threading.Event, events: list) -> None:
    for kill in plan:
        while time.monotonic() - started < kill["at_s"]:
            if stop.wait(0.1):
                return
        node = nodes[kill["node"]]
        node.kill()
        stop.wait(kill["down_s"])
        back = time.monotonic()
        try:
            node.start()
            events.append({**kill, "restart_s": round(time.monotonic() - back, 2)})
        except StepFailed as e:
            events.append({**kill, "restart_error": str(e)[:200]})


def one_database(kind: str, seconds: float, rng: random.Random, webroot: Path, say=print) -> dict:
    """One database's cluster under load and kills; `webroot` is served on 127.0.0.1:80 meanwhile."""
    workdir = SOAK_DIR / "failover" / kind
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    entry: dict = {"database": kind, "seconds": seconds}
    with database_server(kind, workdir / "db") as server:
        server.add_step_user(DB_USER, DB_PASSWORD)
        shared = {"type": server.kind, "dsn": server.dsn(DB_USER, DB_PASSWORD), "database": DB_NAME}
        nodes = [Node(workdir / "node1", free_port()), Node(workdir / "node2", free_port())]
        nodes[0].setup(workdir, shared)
        nodes[0].start()
        nodes[1].join(workdir, nodes[0])
        nodes[1].start()
        proxy = RoundRobinProxy([n.port for n in nodes]).start()
        challenges = webroot / ".well-known" / "acme-challenge"
        challenges.mkdir(parents=True, exist_ok=True)
        url, root = f"https://localhost:{proxy.port}", nodes[0].root
        try:
            bot = Certbot(url, root, workdir / "certbot", webroot)
            tiny = AcmeTiny(url, root, workdir / "acme-tiny", challenges)
            registered = bot.register()
            if registered.returncode != 0:
                raise StepFailed("certbot register", registered.stderr.strip()[-300:])
            tallies = [Tally("certbot"), Tally("acme-tiny")]
            plan = kill_plan(seconds, rng)
            stop, events = threading.Event(), []
            started = time.monotonic()
            deadline = started + seconds
            threads = [threading.Thread(target=issue_until, args=(c, t, deadline, stop))
                       for c, t in zip((bot, tiny), tallies, strict=True)]
            threads.append(threading.Thread(target=_killer, args=(nodes, plan, started, stop, events)))
            for t in threads:
                t.start()
            for t in threads[:2]:
                t.join()
            stop.set()
            threads[2].join()
            for node in nodes:   # both up for the last word
                if node.process is None:
                    node.start()
            # after the storm each client orders again with the account it had: nothing lost
            final = []
            for client, tally in zip((bot, tiny), tallies, strict=True):
                for _ in range(3):
                    serial, error = client.order()
                    tally.record(serial, error)
                    if serial is not None:
                        break
                final.append(tally.last_ok)
        finally:
            proxy.stop()
            for node in nodes:
                node.stop()
        accounts = server.count_rows(DB_NAME, "acme_accounts")
        stored = server.count_rows(DB_NAME, "x509_certs")
    serials = [s for t in tallies for s in t.serials]
    twice = duplicates(serials)
    entry.update(issued=sum(t.issued for t in tallies), failed=sum(t.failed for t in tallies),
                 retried=sum(t.retried for t in tallies), kills=len(events), kill_events=events,
                 clients=[t.as_dict() for t in tallies], duplicate_serials=[str(s) for s in twice],
                 acme_accounts=accounts, x509_certs_stored=stored)
    problems = []
    if twice:
        problems.append(f"{len(twice)} serials issued twice")
    if accounts != 2:
        problems.append(f"{accounts} ACME accounts in the database, not 2")
    if not all(final):
        problems.append("a client could not issue again after the kills: "
                        + "; ".join(t.last_error for t in tallies if not t.last_ok))
    if stored < len(serials):
        problems.append(f"the database holds {stored} certificates, the clients got {len(serials)}")
    if any("restart_error" in e for e in events):
        problems.append("a node did not come back")
    entry["ok"], entry["error"] = not problems, "; ".join(problems) or None
    say(f"  failover on {kind}: issued {entry['issued']}, failed {entry['failed']}, retried {entry['retried']}, "
        f"{entry['kills']} kills: {'ok' if entry['ok'] else 'FAILED: ' + entry['error']}")
    return entry


def database_seeds(seed: int) -> dict[str, int]:
    """A seed per database, drawn up front in KINDS order: the clusters run side by side, so a shared
    generator would hand out its draws in whichever order their threads ask; the same seed, the same kills."""
    rng = random.Random(seed)
    return {kind: rng.randrange(2**32) for kind in KINDS}


def run_inside(seconds: float, seed: int, out: Path) -> None:
    """Every database's cluster at once, each in a thread (the work is in the child processes)."""
    seeds = database_seeds(seed)
    webroot = SOAK_DIR / "failover" / "webroot"
    shutil.rmtree(webroot, ignore_errors=True)
    webroot.mkdir(parents=True)
    results: dict[str, dict] = {}

    def one(kind: str) -> None:
        try:
            results[kind] = one_database(kind, seconds, random.Random(seeds[kind]), webroot)
        except Exception as e:  # noqa: BLE001 - recorded; the other database still runs
            results[kind] = {"database": kind, "ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}

    with ChallengeServer(webroot):
        threads = [threading.Thread(target=one, args=(kind,), name=f"failover-{kind}") for kind in KINDS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    out.write_text(json.dumps([results[kind] for kind in KINDS]))


class Background:
    """The failover campaign's child process (its own network namespace), running beside the VMs."""

    def __init__(self, child: subprocess.Popen, out: Path):
        self.child, self.out = child, out

    def finish(self, report) -> None:
        """Wait for it; its results into `report`."""
        status = self.child.wait()
        entries = json.loads(self.out.read_text()) if self.out.exists() else []
        if status != 0 and not entries:
            entries = [{"database": "both", "ok": False, "error": f"the namespace's run exited {status}"}]
        for entry in entries:
            report.add("failover", entry)
        report.set("failover_survived", f"{sum(1 for e in entries if e.get('ok'))}/{len(entries)}")

    def stop(self) -> None:
        """The campaign was stopped: SIGINT, as a Ctrl-C would (its `finally`s stop the nodes, proxy and
        database it started), then SIGKILL after a minute."""
        from image.runner import stop_process
        stop_process(self.child, grace=60, sig=signal.SIGINT)


def start_failover(seconds: float, seed: int, say=print) -> Background:
    """Both databases at once, in a private network namespace, in a child process started now."""
    out = SOAK_DIR / "failover" / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    say(f"failover: {seconds:g} s, {' and '.join(KINDS)} at the same time, in a private network namespace")
    script = ("ip link set lo up && exec \"$0\" -m image.soak.failover \"$1\" \"$2\" \"$3\"")
    # long-lived: the whole campaign runs in this child (its output is the terminal's, a Ctrl-C reaches
    # it too); Background waits for it or stops it
    child = subprocess.Popen(["unshare", "--net", "sh", "-c", script, sys.executable, str(seconds), str(seed),
                              str(out)], cwd=PROJECT_ROOT)
    return Background(child, out)


if __name__ == "__main__":
    run_inside(float(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
