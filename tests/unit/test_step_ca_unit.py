"""step-ca.service: what it must say, and systemd's own verdict on its exposure (offline, no systemd needed)."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.units import directives as unit_directives

OVERLAY = Path(__file__).resolve().parents[2] / "overlay"
UNIT = OVERLAY / "etc/systemd/system/step-ca.service"
MAX_EXPOSURE = 2.0


def directives():
    return unit_directives(UNIT)


def test_runs_as_step_with_the_password_from_a_file():
    unit = directives()
    assert unit[("Service", "User")] == ["step"]
    assert unit[("Service", "Environment")] == ["STEPPATH=/etc/step-ca"]
    exec_start = unit[("Service", "ExecStart")][0].split()
    assert exec_start[0] == "step-ca"  # resolved by systemd: /usr/local/bin (source build), then /usr/bin (packages)
    assert "--password-file=/etc/step-ca/password.txt" in exec_start
    assert exec_start[-1] == "/etc/step-ca/config/ca.json"


def test_reload_restart_and_port_443():
    unit = directives()
    assert unit[("Service", "ExecReload")] == ["/bin/kill --signal HUP $MAINPID"]
    assert unit[("Service", "Restart")] == ["on-failure"]
    assert unit[("Service", "AmbientCapabilities")] == ["CAP_NET_BIND_SERVICE"]
    assert unit[("Service", "CapabilityBoundingSet")] == ["CAP_NET_BIND_SERVICE"]
    assert ("Service", "ExecStop") not in unit  # SIGTERM, not the seed's kill -9
    assert unit[("Service", "ReadWritePaths")] == ["/var/lib/step-ca"]
    assert unit[("Install", "WantedBy")] == ["multi-user.target"]


def test_starts_only_once_configured():
    unit = directives()
    assert "/etc/step-ca/config/ca.json" in unit[("Unit", "ConditionFileNotEmpty")]
    assert "/etc/step-ca/password.txt" in unit[("Unit", "ConditionFileNotEmpty")]


def test_systemd_analyze_security_exposure_is_at_most_2(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian: systemd)")
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/step-ca.service")
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}", "step-ca.service"],
                            capture_output=True, text=True)
    match = re.search(r"Overall exposure level for step-ca\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_firewalld_default_service_and_sysusers_entry():
    service = (OVERLAY / "usr/lib/firewalld/services/step-ca.xml").read_text()
    assert '<port protocol="tcp" port="443"/>' in service
    sysusers = (OVERLAY / "usr/lib/sysusers.d/step-ca.conf").read_text().split("\n")
    assert any(line.split()[:2] == ["u", "step"] for line in sysusers if line and not line.startswith("#"))

