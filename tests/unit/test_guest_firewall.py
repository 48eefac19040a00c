"""Opening the CA port through firewalld's D-Bus API (busctl), with a full reload only when the
running daemon knows another port than the one setup wrote.

firewalld cannot run on the build host (no system bus, and it would rewrite the host's rules), so
a recorded stand-in answers for it: a `busctl` that keeps firewalld's state (default zone, runtime
and permanent services, the service's ports) in a JSON file and replies in busctl's --json=short
format (checked against systemd 252's busctl on a real bus). The real firewalld is exercised in
the booted appliance (tests/vm: the zone's services and ports after setup).
"""
import json
import os
import sys

import pytest
from ca_appliance import system
from ca_appliance.errors import StepFailed

SERVICE_XML = ('<?xml version="1.0"?>\n<service>\n  <short>step-ca</short>\n'
               '  <port protocol="tcp" port="{port}"/>\n</service>\n')

STAND_IN = r'''
import json, sys
state_file, log = sys.argv[1], sys.argv[2]
argv = sys.argv[3:]
with open(log, "a") as f:
    f.write(" ".join(argv) + "\n")
state = json.load(open(state_file))
if not state["running"]:
    sys.exit("Call failed: The name org.fedoraproject.FirewallD1 was not provided by any .service files")
assert argv[:5] == ["--system", "--json=short", "--auto-start=no", "call", "org.fedoraproject.FirewallD1"], argv
path, interface, method, args = argv[5], argv[6], argv[7], argv[9:]
def reply(kind, value):
    print(json.dumps({"type": kind, "data": [value]}))
if method == "getDefaultZone":
    reply("s", state["zone"])
elif method == "getServiceSettings2":
    ports = state["service_ports"].get(args[0])
    if ports is None:
        sys.exit("Call failed: INVALID_SERVICE: " + args[0])
    reply("a{sv}", {"ports": {"type": "a(ss)", "data": [p.split("/") for p in ports]}})
elif method == "reload":
    state["reloads"] += 1
    state["runtime"] = list(state["permanent"])
elif method == "getZoneByName":
    reply("o", "/org/fedoraproject/FirewallD1/config/zone/0")
elif interface.endswith(".config.zone"):
    assert path == "/org/fedoraproject/FirewallD1/config/zone/0", path
    if method == "queryService":
        reply("b", args[0] in state["permanent"])
    elif args[0] in state["permanent"]:
        sys.exit("Call failed: ALREADY_ENABLED: " + args[0])
    else:
        state["permanent"].append(args[0])
elif interface.endswith(".zone"):
    assert args[0] == state["zone"], args
    if method == "queryService":
        reply("b", args[1] in state["runtime"])
    elif args[1] in state["refuse"]:
        sys.exit("Call failed: INVALID_SERVICE: " + args[1])
    elif args[1] in state["runtime"]:
        sys.exit("Call failed: ALREADY_ENABLED: " + args[1])
    else:
        state["runtime"].append(args[1])
else:
    sys.exit("unexpected call: " + " ".join(argv))
json.dump(state, open(state_file, "w"))
'''


class Firewalld:
    def __init__(self, tmp_path, monkeypatch):
        self.state_file, self.log = tmp_path / "firewalld.json", tmp_path / "calls"
        self.state = {"running": True, "zone": "public", "runtime": ["ssh"], "permanent": ["ssh"],
                      "service_ports": {"step-ca": ["443/tcp"]}, "reloads": 0, "refuse": []}
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (tmp_path / "stand_in.py").write_text(STAND_IN)
        for name, body in {
            "busctl": f'exec {sys.executable} {tmp_path / "stand_in.py"} {self.state_file} {self.log} "$@"',
            "firewall-cmd": "exit 0",   # only its presence is looked at
            "firewall-offline-cmd": f'echo "firewall-offline-cmd $*" >> {self.log}',
        }.items():
            (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
            os.chmod(bin_dir / name, 0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
        self.save()

    def save(self):
        self.state_file.write_text(json.dumps(self.state))

    def now(self):
        return json.loads(self.state_file.read_text())

    def calls(self):
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def firewalld(tmp_path, monkeypatch):
    return Firewalld(tmp_path, monkeypatch)


@pytest.fixture
def written(tmp_path):
    def write(port):
        xml = tmp_path / "step-ca.xml"
        xml.write_text(SERVICE_XML.format(port=port))
        return xml
    return write


def test_ports_are_read_from_the_service_file(tmp_path, written):
    assert system.written_service_ports(written(9000)) == {"9000/tcp"}
    assert system.written_service_ports(tmp_path / "missing.xml") is None


@pytest.mark.parametrize("port, reloads", [(443, 0), (8443, 1)])
def test_reload_only_when_the_running_definition_differs(firewalld, written, port, reloads):
    assert system.open_firewall(written(port)) is None
    after = firewalld.now()
    assert after["reloads"] == reloads
    # both services (the client page's too: build.json's client_page defaults to on), in both configurations
    assert after["runtime"] == after["permanent"] == ["ssh", "step-ca", "ca-appliance-page"]


def test_a_second_run_adds_nothing_twice(firewalld, written):
    system.open_firewall(written(443))
    before = len(firewalld.calls())
    assert system.open_firewall(written(443)) is None
    second = firewalld.calls()[before:]
    assert not [call for call in second if " addService " in call], second
    assert firewalld.now()["runtime"] == ["ssh", "step-ca", "ca-appliance-page"]


def test_an_unknown_service_in_the_running_daemon_means_a_reload(firewalld, written):
    firewalld.state["service_ports"] = {}   # firewalld started before the service file existed
    firewalld.save()
    system.open_firewall(written(443))
    assert firewalld.now()["reloads"] == 1


def test_a_stopped_firewalld_gets_the_services_in_its_files(firewalld, written):
    firewalld.state["running"] = False
    firewalld.save()
    note = system.open_firewall(written(443))
    assert "not running" in note
    assert firewalld.calls()[-1] == ("firewall-offline-cmd --add-service=step-ca "
                                     "--add-service=ca-appliance-page")


def test_a_refusal_names_the_step_and_firewalds_words(firewalld, written):
    firewalld.state["refuse"] = ["ca-appliance-page"]
    firewalld.save()
    with pytest.raises(StepFailed) as failure:
        system.open_firewall(written(443))
    assert failure.value.step == "open firewall"
    assert "INVALID_SERVICE: ca-appliance-page" in str(failure.value)
