"""`invoke soak --parallel`: the worker threads that boot several VMs at once, the report they share,
and the host ports they must not take from each other (real threads and sockets; no VM)."""
import json
import subprocess
import sys
import threading
import time

import pytest

from image.config import PROJECT_ROOT
from image.errors import UserError
from image.soak import report, workers
from image.vm.qemu import free_port


def test_every_job_runs_once_with_the_workers_side_by_side():
    done, running, most = [], [0], [0]
    lock = threading.Lock()

    def job(i):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
            done.append(i)

    pool = workers.Workers(2)
    for i in range(6):
        pool.add(lambda i=i: job(i))
    pool.run()
    assert sorted(done) == list(range(6)) and most[0] == 2


def test_a_job_added_by_a_job_runs_next_even_when_the_queue_was_empty():
    order = []
    pool = workers.Workers(2)

    def first():
        order.append("cut")
        pool.add(lambda: order.append("commands on the survivor"), first=True)

    pool.add(first)
    pool.run()
    assert order == ["cut", "commands on the survivor"]


class FakeVM:
    def __init__(self):
        self.killed = False

    def kill(self):
        self.killed = True


class FakeTarget:   # the two calls Workers makes on a target
    def __init__(self):
        self.vm = FakeVM()

    def forget_connection(self):
        pass


def test_a_bug_in_a_job_stops_the_campaign_kills_the_live_vms_and_is_raised():
    pool = workers.Workers(2)
    target, ran = FakeTarget(), []

    def boots():
        pool.live(target)
        time.sleep(0.2)

    def bug():
        raise RuntimeError("a bug")

    pool.add(boots)
    pool.add(bug)
    for i in range(5):
        pool.add(lambda i=i: ran.append(i))
    with pytest.raises(RuntimeError, match="a bug"):
        pool.run()
    assert target.vm.killed and len(ran) < 5


def test_a_target_that_is_gone_is_not_killed_again():
    pool, target = workers.Workers(1), FakeTarget()
    pool.live(target)
    pool.gone(target)
    pool.kill_all()
    assert not target.vm.killed


@pytest.mark.parametrize("value, cores, expected", [
    (None, 2, 2), ("auto", 8, 4), ("auto", 1, 1), ("3", 2, 3), (" 1 ", 2, 1)])
def test_parallel_is_auto_or_a_count(value, cores, expected):
    assert workers.parse_workers(value, cores=cores) == expected


def test_auto_keeps_half_the_memory_free():
    assert workers.parse_workers("auto", cores=4, memory_mb=16384, vm_memory_mb=4096) == 2


@pytest.mark.parametrize("value", ["0", "17", "two", "-1", "1.5"])
def test_a_bad_parallel_is_one_line_naming_the_option_and_what_is_allowed(value):
    with pytest.raises(UserError) as e:
        workers.parse_workers(value)
    assert str(e.value).startswith("--parallel: ") and repr(value) in str(e.value) and "1 to 16" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("image_cpus, vms, cores, expected", [
    (2, 2, 2, 1),    # two VMs on two cores: one vCPU each, no overcommit
    (2, 1, 2, 2),    # one VM: what the image asks for
    (2, 2, 8, 2),    # plenty of cores: never more than the image asks for
    (4, 3, 8, 2),    # shared out, rounded down
    (2, 4, 2, 1)])   # more VMs than cores: still one each
def test_auto_vm_cpus_shares_the_cores_out(image_cpus, vms, cores, expected):
    assert workers.parse_vm_cpus("auto", image_cpus, vms, cores=cores) == expected
    assert workers.parse_vm_cpus(None, image_cpus, vms, cores=cores) == expected


def test_vm_cpus_given_is_taken_as_is():
    assert workers.parse_vm_cpus(" 3 ", 2, 2, cores=2) == 3


@pytest.mark.parametrize("value", ["0", "65", "one", "-2", "1.5"])
def test_a_bad_vm_cpus_is_one_line_naming_the_option_and_what_is_allowed(value):
    with pytest.raises(UserError) as e:
        workers.parse_vm_cpus(value, 2, 2)
    assert str(e.value).startswith("--vm-cpus: ") and repr(value) in str(e.value) and "1 to 64" in str(e.value)
    assert "\n" not in str(e.value)


def test_cuts_are_reported_in_plan_order_whichever_ends_first(tmp_path):
    rep = report.SoakReport(tmp_path / "soak.json", seed=1, accel="tcg", image=None)
    rep.set("power_cuts_planned", 3)
    threads = [threading.Thread(target=rep.add, args=("cuts", {"index": i, "ok": True})) for i in (3, 1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = json.loads((tmp_path / "soak.json").read_text())
    assert [c["index"] for c in data["cuts"]] == [1, 2, 3] and data["power_cuts_survived"] == "3/3"


def test_a_port_handed_out_is_never_handed_out_again_in_this_process():
    # a VM killed by a power cut leaves its ports unbound until it boots again: the VM beside it
    # must not pick them meanwhile
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def test_the_longest_cuts_run_first_and_the_report_keeps_the_plan_order():
    import random

    from image.soak import plan, powercut
    moments = plan.plan_cuts(20, random.Random(2028))
    order = powercut.run_order(moments)
    assert sorted(m.index for m in order) == list(range(1, 21))
    stages = [plan.STAGE_NAMES.index(m.anchor) for m in order]
    assert stages == sorted(stages, reverse=True)
    assert order[-1].anchor == "kernel" and order[0].anchor == "setup finished"


def test_the_checks_run_from_a_worker_thread_when_sigint_is_ignored(tmp_path):
    """`nohup invoke soak &` starts with SIGINT ignored, and the soak runs the tests/vm checks with
    pytest.main in a worker thread, as appliance.vm_checks does. The suite's session set-up must not set
    a signal handler there (only the main thread may): it did, and every cut's checks failed with
    'no JUnit file'. A real pytest session, in a child process with SIGINT ignored."""
    junit = tmp_path / "junit.xml"
    test = str(PROJECT_ROOT / "tests/unit/test_soak.py::test_a_plan_of_none_is_empty_and_a_negative_count_is_refused")
    script = (
        "import signal, sys, threading, pytest\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "codes = []\n"
        f"args = [{test!r}, '--junitxml={junit}', '-q', '-p', 'no:cacheprovider', '--rootdir={PROJECT_ROOT}']\n"
        "worker = threading.Thread(target=lambda: codes.append(pytest.main(args)))\n"
        "worker.start(); worker.join()\n"
        "sys.exit(int(codes[0]) if codes else 99)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert 'failures="0"' in junit.read_text() and 'errors="0"' in junit.read_text()
