"""Opening the CA port: firewalld's full reload only when the running daemon knows another port
than the one setup wrote. firewalld cannot run on the build host, so a recording firewall-cmd
stands in for the daemon's command line; the decision under test is the appliance's own."""
import os

import pytest
from ca_appliance import system

SERVICE_XML = ('<?xml version="1.0"?>\n<service>\n  <short>step-ca</short>\n'
               '  <port protocol="tcp" port="{port}"/>\n</service>\n')


def test_ports_are_read_from_firewall_cmd_and_from_the_service_file(tmp_path):
    info = "step-ca\n  ports: 443/tcp 8443/tcp\n  protocols: \n  source-ports: \n"
    assert system.service_ports(info) == {"443/tcp", "8443/tcp"}
    assert system.service_ports("step-ca\n  protocols:\n") == set()
    xml = tmp_path / "step-ca.xml"
    xml.write_text(SERVICE_XML.format(port=9000))
    assert system.written_service_ports(xml) == {"9000/tcp"}
    assert system.written_service_ports(tmp_path / "missing.xml") is None


@pytest.fixture
def fake_firewalld(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "firewall-cmd"
    script.write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\n'
                      'if [ "$1" = "--info-service=step-ca" ]; then\n'
                      '    printf "step-ca\\n  ports: %s\\n" "$RUNTIME_PORT"\nfi\n')
    os.chmod(script, 0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return calls


@pytest.mark.parametrize("runtime, written, reload", [("443/tcp", 443, False), ("443/tcp", 8443, True)])
def test_reload_only_when_the_running_definition_differs(fake_firewalld, tmp_path, monkeypatch, runtime, written,
                                                         reload):
    monkeypatch.setenv("RUNTIME_PORT", runtime)
    xml = tmp_path / "step-ca.xml"
    xml.write_text(SERVICE_XML.format(port=written))
    assert system.open_firewall(xml) is None
    calls = fake_firewalld.read_text().splitlines()
    assert ("--reload" in calls) is reload
    # the client page's service too (build.json's client_page defaults to on)
    assert calls[-2:] == ["--permanent --add-service=step-ca --add-service=ca-appliance-page",
                          "--add-service=step-ca --add-service=ca-appliance-page"]
