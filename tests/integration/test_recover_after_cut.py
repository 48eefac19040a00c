"""A power cut during a day-2 change (renew-intermediate, the client page), then the boot's
`ca-appliance recover` (ca-appliance-recover.service, before step-ca): the CA is as it was before the
change, nothing staged or set aside is left, and step-ca serves it.

The cut is a real SIGKILL the CLI sends itself at a named point (CA_APPLIANCE_TEST_KILL_AT); the
change and the recovery are the real commands. `invoke soak` cuts the same commands under QEMU.
"""
import fnmatch
import os
import signal
from pathlib import Path

import pytest
from ca_helpers import run_cli

from tests.helpers.units import directives

UNIT = Path(__file__).resolve().parents[2] / "overlay/etc/systemd/system/ca-appliance-recover.service"

SWAP_POINTS = ["swap step-ca (old moved aside)", "swap step-ca (new in place)"]
PAGE_POINTS = ["swap page (old moved aside)", "swap page (new in place)"]


def cut(ca, point, *command):
    env = dict(os.environ, CA_APPLIANCE_TEST_KILL_AT=point)
    result = run_cli(*command, "--prefix", ca.prefix, *(["--no-system"] if command[0] != "publish-page" else []),
                     check=False, env=env)
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    return result


def leftovers(prefix: Path):
    return sorted(str(p.relative_to(prefix)) for p in prefix.rglob(".*") if ".new-" in p.name or ".old-" in p.name)


@pytest.mark.parametrize("point", SWAP_POINTS)
def test_a_renewal_cut_mid_swap_is_undone_by_recover_and_the_old_intermediate_serves(make_ca, serve, point):
    ca = make_ca()
    intermediate = ca.intermediate.read_bytes()
    key = (ca.steppath / "secrets/intermediate_ca_key").read_bytes()
    cut(ca, point, "renew-intermediate")
    assert (ca.prefix / "etc/ca-appliance/replace-journal.json").exists()   # what the unit's condition sees
    result = run_cli("recover", "--prefix", ca.prefix)
    assert "was undone" in result.stdout
    assert ca.intermediate.read_bytes() == intermediate
    assert (ca.steppath / "secrets/intermediate_ca_key").read_bytes() == key
    assert not (ca.prefix / "etc/ca-appliance/replace-journal.json").exists()
    assert leftovers(ca.prefix) == []
    serve(ca)   # step-ca starts on the tree recover left
    again = run_cli("renew-intermediate", "--prefix", ca.prefix, "--no-system")   # and the change can be made
    assert "New intermediate in place" in again.stdout and ca.intermediate.read_bytes() != intermediate


def test_a_renewal_cut_after_its_commit_keeps_the_new_intermediate_and_recover_removes_the_old_trees(make_ca, serve):
    """Cut between the commit (the journal gone) and the deletion of the trees set aside: the change
    stands, and the old trees, which hold the previous intermediate key, must not stay on disk (soak: a
    first boot cut there left /var/lib/.step-ca.old-*). The boot's unit must see them, and recover
    removes them without undoing anything."""
    ca = make_ca()
    intermediate = ca.intermediate.read_bytes()
    cut(ca, "committed, old trees not yet deleted", "renew-intermediate")
    assert not (ca.prefix / "etc/ca-appliance/replace-journal.json").exists()
    assert [p for p in leftovers(ca.prefix) if ".step-ca.old-" in p], "the cut should leave the old trees"
    result = run_cli("recover", "--prefix", ca.prefix)
    assert "no interrupted change of the CA" in result.stdout
    assert "removed what a finished change of the CA left beside it: .step-ca.old-" in result.stdout
    assert leftovers(ca.prefix) == []
    assert ca.intermediate.read_bytes() != intermediate   # committed: the new intermediate stays
    serve(ca)


@pytest.mark.parametrize("point", PAGE_POINTS)
def test_a_page_update_cut_mid_swap_leaves_nothing_after_recover(make_ca, point):
    ca = make_ca()
    page = ca.prefix / "var/lib/ca-appliance/page"
    root_pem = (page / "root.pem").read_bytes()
    cut(ca, point, "publish-page")
    assert [p for p in leftovers(ca.prefix) if "/.page." in f"/{p}"], "the cut should leave a page tree aside"
    result = run_cli("recover", "--prefix", ca.prefix)
    assert "no interrupted change of the CA" in result.stdout
    assert "removed what an interrupted client page update left: .page." in result.stdout
    assert leftovers(ca.prefix) == []
    assert (page / "root.pem").read_bytes() == root_pem and (page / "index.html").is_file()
    if point == "swap page (old moved aside)":   # the page itself was gone: made again
        assert "written again" in result.stdout


def test_a_publish_after_a_cut_one_clears_its_leftovers_too(make_ca):
    ca = make_ca()
    cut(ca, "swap page (new in place)", "publish-page")
    run_cli("publish-page", "--prefix", ca.prefix)
    assert leftovers(ca.prefix) == []


def test_recover_with_nothing_to_do_changes_nothing(make_ca):
    ca = make_ca()
    before = {p: p.stat().st_mtime_ns for p in ca.prefix.rglob("*")}
    result = run_cli("recover", "--prefix", ca.prefix)
    assert result.stdout.strip() == "recover: no interrupted change of the CA"
    assert {p: p.stat().st_mtime_ns for p in ca.prefix.rglob("*")} == before


def test_the_unit_runs_exactly_when_a_cut_left_something(make_ca):
    """The unit's ORed conditions name the paths the real staging makes: a cut renewal's and a cut
    page update's trees and the journal match one; a CA at rest matches none (no Python at boot)."""
    unit = directives(UNIT)
    conditions = unit.get(("Unit", "ConditionPathExists"), []) + unit.get(("Unit", "ConditionPathExistsGlob"), [])
    assert conditions and all(c.startswith("|") for c in conditions)   # ORed: any one starts it
    patterns = [c[1:] for c in conditions]

    def matching(prefix):
        found = set()
        for path in prefix.rglob("*"):
            relative = "/" + str(path.relative_to(prefix))
            found |= {p for p in patterns if fnmatch.fnmatchcase(relative, p)}
        return found

    ca = make_ca()
    assert matching(ca.prefix) == set()
    cut(ca, "swap step-ca (new in place)", "renew-intermediate")
    assert "/etc/ca-appliance/replace-journal.json" in matching(ca.prefix)
    run_cli("recover", "--prefix", ca.prefix)
    cut(ca, "swap page (new in place)", "publish-page")
    assert any(".page." in p for p in matching(ca.prefix))
    run_cli("recover", "--prefix", ca.prefix)
    cut(ca, "committed, old trees not yet deleted", "renew-intermediate")
    assert {"/etc/.step-ca.old-*", "/var/lib/.step-ca.old-*"} & matching(ca.prefix)
    run_cli("recover", "--prefix", ca.prefix)
    assert matching(ca.prefix) == set()
    assert "step-ca.service" in " ".join(unit[("Unit", "Before")]).split()
    assert unit[("Service", "ExecStart")] == ["/usr/bin/ca-appliance recover"]
