"""Setup waits for NetworkManager and firewalld itself (the first-boot unit is not ordered after
them, so the keys are made while they start). systemd is not PID 1 on the build host, so a
recorded `systemctl` stands in; the real ordering runs in every VM boot of tests/boot and verify."""
import os

from ca_appliance import system


def stand_in_systemctl(tmp_path, monkeypatch, enabled):
    calls = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cases = "\n".join(f'    "is-enabled {unit}") echo enabled ;;' for unit in enabled)
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {calls}\ncase "$*" in\n{cases}\n'
                                       '    "is-enabled "*) echo "Failed to get unit file state" >&2; exit 1 ;;\n'
                                       'esac\n')
    os.chmod(bin_dir / "systemctl", 0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return calls


def test_only_the_enabled_units_are_started_and_waited_for(tmp_path, monkeypatch):
    calls = stand_in_systemctl(tmp_path, monkeypatch, enabled=["firewalld.service"])
    system.wait_for_boot_units()
    assert calls.read_text().splitlines() == ["is-enabled NetworkManager.service", "is-enabled firewalld.service",
                                              "start firewalld.service"]


def test_nothing_is_started_when_neither_is_enabled(tmp_path, monkeypatch):
    calls = stand_in_systemctl(tmp_path, monkeypatch, enabled=[])
    system.wait_for_boot_units()
    assert "start" not in calls.read_text()


def test_without_systemd_there_is_nothing_to_wait_for(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))   # no systemctl at all
    system.wait_for_boot_units()
