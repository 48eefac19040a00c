"""A test image says so everywhere people look on the appliance, and the marking fails closed: a
build.json that names no step-ca version (or an old one), with no readable step-ca installed, is a
test image on the status (warning, exit 1), the console banner, the SSH login's motd and the client
page. The real CLI under the distro python, on a CA it set up."""
import json
import os
import shutil

import ca_helpers
import pytest
from ca_helpers import CA, answers_for, free_port, run_cli

from tests.helpers.clientpage import parse

MARK = "TEST IMAGE - not for production"

pytestmark = pytest.mark.skipif(
    shutil.which("step-ca", path="/usr/local/bin:/usr/bin") is not None,
    reason="a step-ca installed on this host would be read as the appliance's own")


@pytest.fixture(autouse=True)
def no_step_ca_installed(monkeypatch):
    """The CLI runs with no step-ca to read (the helpers otherwise put the pinned one on PATH)."""
    monkeypatch.setattr(ca_helpers, "as_appliance", lambda env: dict(os.environ if env is None else env))


def ca_built_with(tmp_path, build):
    prefix = tmp_path / "ca"
    build_json = prefix / "usr/lib/ca-appliance/build.json"
    build_json.parent.mkdir(parents=True)
    build_json.write_text(json.dumps(build))
    port = free_port()
    ca = CA(prefix, port, answers_for(port))
    ca.setup()
    return ca


def shown(ca):
    result = run_cli("status", "--json", "--prefix", ca.prefix, check=False)
    text = run_cli("status", "--prefix", ca.prefix, check=False).stdout
    page = parse((ca.prefix / "var/lib/ca-appliance/page/index.html").read_text())
    return (result.returncode, json.loads(result.stdout), text,
            (ca.prefix / "etc/issue.d/ca-appliance.issue").read_text(),
            (ca.prefix / "etc/motd.d/ca-appliance").read_text(), page)


@pytest.mark.parametrize("build, why", [
    ({"step_ca_version": None, "test_only": False}, "could not be read"),
    ({"test_only": False}, "could not be read"),
    ({"step_ca_version": "0.28.1", "test_only": False}, "older than 0.29.0"),
    ({"step_ca_version": "0.19.0", "test_only": True,
      "test_only_reason": "step-ca 0.19.0 is older than 0.29.0: GHSA-h8cp-697h-8c8p"}, "older than 0.29.0"),
], ids=["version-null", "version-missing", "old-unmarked", "marked-by-the-build"])
def test_a_test_image_is_marked_on_status_banner_motd_and_page(tmp_path, build, why):
    code, facts, text, issue, motd, page = shown(ca_built_with(tmp_path, build))
    assert code == 1 and facts["state"] == "warning", facts
    assert facts["test_image"] is True and why in facts["test_image_reason"]
    assert any(f["level"] == "warning" and f["message"].startswith(MARK) for f in facts["findings"])
    assert text.splitlines()[0].startswith("TEST IMAGE:") and "WARNING" in text
    for banner in (issue, motd):
        assert banner.splitlines()[0].startswith(f"*** {MARK} ***") and why in banner.splitlines()[0]
    notice = page.by_id["test-image"]
    assert MARK in notice and why in notice


def test_a_production_image_has_no_mark_anywhere(tmp_path):
    """build.json names a fixed step-ca (what a build records) and nothing marks it: no mark."""
    code, facts, text, issue, motd, page = shown(
        ca_built_with(tmp_path, {"step_ca_version": "0.30.2", "test_only": False}))
    assert code == 0 and facts["state"] == "ok" and facts["test_image"] is False, facts
    assert "TEST IMAGE" not in text + issue + motd
    assert "test-image" not in page.by_id
    assert "Root fingerprint:" in motd and facts["root_fingerprint"] in motd
