"""The CA's lock (guest lock.py): one holder at a time across real processes, a clear refusal naming
the holder, a bounded wait, and nothing left under the prefix once released."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from ca_appliance import lock
from ca_appliance.layout import Layout

GUEST_LIB = Path(__file__).resolve().parents[2] / "overlay/usr/lib/ca-appliance"


def test_a_second_taker_is_refused_with_the_holders_name_and_nothing_is_left_after(tmp_path):
    layout = Layout(tmp_path / "prefix")
    with lock.held(layout, "renew-intermediate"):
        with pytest.raises(lock.Busy) as refused:
            with lock.held(layout, "backup"):
                pytest.fail("two holders")
        assert str(refused.value).startswith("backup: another ca-appliance command is changing the CA "
                                             "(renew-intermediate, pid ")
        assert refused.value.exit_code == 2
    assert not (tmp_path / "prefix").exists()   # the prefix it made for the lock went with it
    with lock.held(layout, "backup"):            # free again
        pass


def test_a_waiting_taker_gives_up_after_its_wait(tmp_path):
    layout = Layout(tmp_path)
    with lock.held(layout, "restore"):
        with pytest.raises(lock.Busy, match=r"\(restore, pid \d+\)"):
            with lock.held(layout, "restart-if-stale", wait=0.3, poll=0.05):
                pytest.fail("two holders")


def test_an_error_inside_releases_the_lock(tmp_path):
    layout = Layout(tmp_path)
    with pytest.raises(RuntimeError):
        with lock.held(layout, "setup"):
            raise RuntimeError("a failed step")
    assert not (tmp_path / "run").exists()
    with lock.held(layout, "setup"):
        pass


WORKER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[1])
    from ca_appliance import lock
    from ca_appliance.layout import Layout
    prefix, counter, inside = sys.argv[2], sys.argv[3], sys.argv[4]
    for _ in range(int(sys.argv[5])):
        with lock.held(Layout(prefix), "worker", wait=120, poll=0.001):
            os.close(os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY))   # fails if two are inside
            with open(counter) as handle:
                value = int(handle.read())
            with open(counter, "w") as handle:
                handle.write(str(value + 1))
            os.unlink(inside)
""")


def test_many_processes_taking_and_releasing_never_hold_it_together(tmp_path):
    """Real processes racing the release (unlink, rmdir) against new takers (open, mkdir): the counter
    is exact, no one is ever inside with another, and no lock file is left after."""
    prefix = tmp_path / "prefix"
    counter, inside = tmp_path / "counter", tmp_path / "inside"
    counter.write_text("0")
    workers, rounds = 6, 40
    processes = [subprocess.Popen([sys.executable, "-c", WORKER, str(GUEST_LIB), str(prefix), str(counter),
                                   str(inside), str(rounds)], stderr=subprocess.PIPE, text=True)
                 for _ in range(workers)]
    errors = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    assert errors == [(0, "")] * workers
    assert counter.read_text() == str(workers * rounds)
    # the last holder removed the file; a directory one made may stay while another used it (empty)
    assert [p for p in prefix.rglob("*") if not p.is_dir()] == []
