"""A setup cut short (SIGKILL, as a power cut would) at each of its steps, then run again: the CA
comes up complete, step-ca serves it, nothing half-written is left behind.

The cut is a real signal the CLI sends itself at a named point (CA_APPLIANCE_TEST_KILL_AT);
what runs before and after it is the real setup. The system steps (hostname, network, ...) only
run on the appliance: `invoke verify` cuts a first boot there.
"""
import json
import os
import signal

import pytest
from ca_helpers import CA, answers_for, free_port, run_cli

CUT_POINTS = ["generated", "staged", "swap step-ca (new in place)", "swap step-ca (old moved aside)",
              "committed", "files written"]
FORCE_CUTS = ["swap step-ca (old moved aside)", "swap step-ca (new in place)", "staged"]


def cut_setup(ca, point, *extra):
    env = dict(os.environ, CA_APPLIANCE_TEST_KILL_AT=point)
    answers_file = ca.prefix.parent / f"{ca.prefix.name}-answers.yaml"
    answers_file.write_text(json.dumps(ca.answers))
    return run_cli("setup", "--answers", answers_file, "--prefix", ca.prefix, "--no-system", *extra,
                   check=False, env=env)


def leftovers(prefix):
    return sorted(str(p.relative_to(prefix)) for p in prefix.rglob(".*") if ".new-" in p.name or ".old-" in p.name)


@pytest.mark.parametrize("point", CUT_POINTS)
def test_first_setup_cut_at_each_step_completes_on_the_rerun(tmp_path, point, serve):
    port = free_port()
    ca = CA(tmp_path / "ca", port, answers_for(port))
    cut = cut_setup(ca, point)
    assert cut.returncode == -signal.SIGKILL, cut.stdout + cut.stderr
    assert not (ca.prefix / "etc/ca-appliance/setup-complete").exists()
    again = ca.setup()  # what the first-boot unit does on the next boot
    assert (ca.prefix / "etc/ca-appliance/setup-complete").exists()
    assert leftovers(ca.prefix) == []
    assert not (ca.prefix / "etc/ca-appliance/replace-journal.json").exists()
    if point in ("committed", "files written"):
        assert "did not finish" in again.stdout  # resumed the same CA rather than making another
    serve(ca)  # step-ca starts on what is there: a complete, consistent CA


def test_forced_setup_cut_mid_swap_keeps_the_previous_ca(tmp_path):
    port = free_port()
    ca = CA(tmp_path / "ca", port, answers_for(port))
    ca.setup()
    before = ca.root.read_bytes()
    for point in FORCE_CUTS:
        cut = cut_setup(ca, point, "--force")
        assert cut.returncode == -signal.SIGKILL, cut.stdout + cut.stderr
        refused = ca.setup(check=False)  # recovers the interrupted swap, then: already configured
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert ca.root.read_bytes() == before, point
        assert leftovers(ca.prefix) == []


def test_oserror_is_one_line_not_a_traceback(tmp_path):
    port = free_port()
    ca = CA(tmp_path / "ca", port, answers_for(port))
    ca.setup()
    (ca.prefix / "etc/ca-appliance/setup-complete").unlink()
    (ca.prefix / "etc/firewalld/services/step-ca.xml").unlink()
    (ca.prefix / "etc/firewalld/services/step-ca.xml").mkdir()  # a directory where the file goes
    result = ca.setup(check=False)  # resumes the system steps; writing the firewalld service fails
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "rerun" in result.stderr
