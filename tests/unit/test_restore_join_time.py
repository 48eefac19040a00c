"""network.ntp reaches chrony on every first boot, not only a new PKI's (issue 25 item 1): a first-boot
restore, a join (and a resumed setup, which runs the same system steps) configure chrony with the answers'
servers.

chrony's files are real files in a temporary tree, written by the appliance's own configure_chrony; the
steps that need systemd, NetworkManager or sshd (none of which runs on the build host) are recorded
stand-ins that only note they were called.
"""
import io
import os
import pwd

import pytest
from ca_appliance import answers, apply, backup, system, upgrade
from ca_appliance.layout import Layout

from tests.unit.test_guest_archive import STEP_UID, make_ca

SERVERS = ["ntp1.lab.example", "192.168.70.1"]
SYSTEM_STEPS = ("set_hostname", "configure_network", "install_admin_keys", "reload_sshd", "open_firewall",
                "install_trust_anchor", "start_service", "refresh_console_issue", "restore_selinux_labels")


@pytest.fixture
def chrony(tmp_path, monkeypatch):
    """A Debian chrony.conf and sources.d in tmp; chrony's restart asks for a unit that does not exist."""
    conf = tmp_path / "chrony/chrony.conf"
    conf.parent.mkdir()
    conf.write_text("pool 2.debian.pool.ntp.org iburst\nsourcedir /run/chrony-dhcp\nsourcedir /etc/chrony/sources.d\n")
    files = system.ChronyFiles(conf, tmp_path / "chrony/ca-appliance.sources", ("/etc/chrony/sources.d",),
                               "ca-appliance-test-none.service")
    monkeypatch.setattr(system, "chrony_files", lambda base=None: files)
    return files


@pytest.fixture
def called(monkeypatch):
    seen = []
    for name in SYSTEM_STEPS:
        monkeypatch.setattr(system, name, lambda *args, _name=name, **kwargs: seen.append(_name))
    monkeypatch.setattr(apply, "serve_restored_ca", lambda layout, out: seen.append("serve_restored_ca"))
    return seen


def answers_with_ntp():
    ca = {"name": "Time CA", "dns_names": ["ca.lab.example"], "address": ":443", "provisioner": "a@lab.example",
          "password": "Vx7-kq2R-mw9P-tz4L-hb3N", "ssh": False}
    return answers.validate({"hostname": "ca2.lab.example", "ca": ca, "network": {"mode": "dhcp", "ntp": SERVERS}},
                            answers.load_defaults())


def servers_in(files):
    return [line.split()[1] for line in files.sources.read_text().splitlines() if line.startswith("server ")]


def test_system_steps_of_a_join_or_a_resumed_setup_give_chrony_the_answers_servers(tmp_path, chrony, called):
    layout = make_ca(tmp_path / "root", step_account=False)
    apply._system_steps(answers_with_ntp(), layout, restart=True, out=io.StringIO())
    assert servers_in(chrony) == SERVERS
    active = [line for line in chrony.conf.read_text().splitlines() if not line.startswith("#")]
    assert active == ["sourcedir /etc/chrony/sources.d"]   # neither the pool nor DHCP's servers
    assert "start_service" in called


@pytest.mark.skipif(os.geteuid() != 0, reason="restoring gives files to the step account: needs root")
def test_a_first_boot_restore_gives_chrony_the_answers_servers(tmp_path, chrony, called, monkeypatch):
    source = make_ca(tmp_path / "old")
    archive = tmp_path / "old.tar.gz"
    backup.write_archive(source, archive)
    (tmp_path / "new/etc").mkdir(parents=True)
    (tmp_path / "new/etc/passwd").write_text(f"root:x:0:0::/root:/bin/sh\nstep:x:{STEP_UID}:{STEP_UID}::/:/bin/false\n")
    (tmp_path / "new/etc/group").write_text(f"root:x:0:\nstep:x:{STEP_UID}:\n")
    layout = Layout(tmp_path / "new")
    monkeypatch.setattr(Layout, "is_system", property(lambda self: True))   # the appliance's own code path
    monkeypatch.setattr(system, "ensure_step_user", lambda: pwd.getpwnam("nobody"))
    monkeypatch.setattr(system, "service_state", lambda: "inactive")
    upgrade.restore_at_first_boot(layout, archive, answers=answers_with_ntp(), use_system=True, out=io.StringIO(),
                                  allow_unencrypted=True)
    assert servers_in(chrony) == SERVERS
    assert "serve_restored_ca" in called and layout.setup_complete.exists()
