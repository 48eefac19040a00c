"""The client page's units, firewall service and build switch: what they must say, systemd's own
verdict on the server's exposure (offline), and that page.enabled: false leaves them all out."""
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from helpers.units import directives

from image.config import ConfigError, load_config
from image.payload import build_info, write_payload_tarball

OVERLAY = Path(__file__).resolve().parents[2] / "overlay"
UNITS = OVERLAY / "etc/systemd/system"
SOCKET = UNITS / "ca-appliance-page.socket"
SERVICE = UNITS / "ca-appliance-page.service"
FIREWALL = OVERLAY / "usr/lib/firewalld/services/ca-appliance-page.xml"
MAX_EXPOSURE = 2.0



def test_the_socket_owns_port_80_and_is_what_gets_enabled():
    socket_unit, service = directives(SOCKET), directives(SERVICE)
    assert socket_unit[("Socket", "ListenStream")] == ["80"]
    assert socket_unit[("Install", "WantedBy")] == ["sockets.target"]
    assert not any(section == "Install" for section, _ in service), "the service is started by its socket only"


def test_the_server_has_no_privilege_no_network_and_reads_only():
    service = directives(SERVICE)
    assert service[("Service", "ExecStart")] == ["/usr/bin/ca-appliance serve-page"]
    assert service[("Service", "DynamicUser")] == ["yes"]
    assert service[("Service", "CapabilityBoundingSet")] == [""]
    # its own sockets reach only loopback (step-ca's /crl); clients come through the passed socket
    assert ("Service", "PrivateNetwork") not in service
    assert service[("Service", "RestrictAddressFamilies")] == ["AF_INET AF_INET6"]
    assert service[("Service", "IPAddressDeny")] == ["any"]
    assert service[("Service", "IPAddressAllow")] == ["localhost"]
    assert service[("Service", "ProtectSystem")] == ["strict"]
    assert service[("Service", "BindReadOnlyPaths")] == ["-/var/lib/ca-appliance/page"]
    assert ("Service", "ReadWritePaths") not in service


def test_systemd_analyze_security_exposure_is_at_most_2(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian: systemd)")
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in (SOCKET, SERVICE):
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}",
                             "ca-appliance-page.service"], capture_output=True, text=True)
    match = re.search(r"Overall exposure level for ca-appliance-page\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_firewalld_service_opens_80_tcp_only():
    service = FIREWALL.read_text()
    assert re.findall(r"<port [^>]*/>", service) == ['<port protocol="tcp" port="80"/>']


def test_page_enabled_is_a_boolean_build_key_recorded_in_build_json(tmp_path):
    assert load_config().page.enabled is True
    assert build_info(load_config())["client_page"] is True
    off = tmp_path / "off.yaml"
    off.write_text("page: {enabled: false}\n")
    assert build_info(load_config(off))["client_page"] is False
    bad = tmp_path / "bad.yaml"
    bad.write_text("page: {enabled: sometimes}\n")
    with pytest.raises(ConfigError, match=r"page\.enabled.*boolean"):
        load_config(bad)


@pytest.mark.parametrize("enabled", [True, False])
def test_payload_has_the_page_units_only_when_enabled(tmp_path, enabled):
    override = tmp_path / "page.yaml"
    override.write_text(f"page: {{enabled: {str(enabled).lower()}}}\n")
    cfg = load_config(override)
    with tarfile.open(write_payload_tarball(cfg, tmp_path / "payload.tar.gz")) as tar:
        names = set(tar.getnames())
        info = json.load(tar.extractfile("usr/lib/ca-appliance/build.json"))
    page_files = {"etc/systemd/system/ca-appliance-page.socket", "etc/systemd/system/ca-appliance-page.service",
                  "usr/lib/firewalld/services/ca-appliance-page.xml"}
    assert (page_files & names) == (page_files if enabled else set())
    assert info["client_page"] is enabled
    # both bases: provision enables every unit the payload ships, so no page unit means none enabled


def test_the_guest_defaults_to_the_page_on():
    from ca_appliance import buildinfo
    assert buildinfo.DEFAULTS["client_page"] is True


def test_page_url_is_plain_http_on_the_ca_host():
    from ca_appliance import clientpage
    assert clientpage.page_url("https://ca.lab.example") == "http://ca.lab.example/"
    assert clientpage.page_url("https://ca.lab.example:8443") == "http://ca.lab.example/"
    assert clientpage.page_url("https://[fd00::1]:8443") == "http://[fd00::1]/"
    assert clientpage.page_url("https://192.168.70.10") == "http://192.168.70.10/"


# ---- the server's limits, in process with short clocks (the real process: tests/integration)


def test_what_the_server_logs_is_escaped_and_cut():
    from ca_appliance.clientpage import LOG_MAX, loggable
    assert loggable('GET /\x1b[2J\x07\r\n\\ \u00e9 HTTP/1.0') == 'GET /\\x1b[2J\\x07\\x0d\\x0a\\\\ \\xe9 HTTP/1.0'
    long = loggable("A" * 5000)
    assert long.startswith("A" * LOG_MAX) and long.endswith(f"... ({5000 - LOG_MAX} more characters)")


def test_a_trickling_connection_is_cut_at_the_deadline(tmp_path, monkeypatch):
    """One byte every half second never trips the idle timeout; the connection deadline still ends it."""
    import socket
    import threading
    import time

    from ca_appliance import clientpage
    monkeypatch.setattr(clientpage, "CONNECTION_DEADLINE", 2)
    (tmp_path / "index.html").write_text("page")
    server = clientpage.make_server(tmp_path, ("127.0.0.1", 0))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        with socket.create_connection(server.server_address, timeout=10) as sock:
            cut = False
            for char in b"GET / HTTP/1.0\r\nX-Slow: " + b"a" * 100:
                try:
                    sock.sendall(bytes([char]))
                except (BrokenPipeError, ConnectionResetError):
                    cut = True
                    break
                time.sleep(0.5)
                if time.monotonic() - started > 8:
                    break
            if not cut:
                sock.settimeout(5)
                try:
                    cut = sock.recv(100) == b""
                except ConnectionResetError:
                    cut = True
        assert cut and time.monotonic() - started < 8
    finally:
        server.shutdown()
        server.server_close()


def test_connections_over_the_per_address_limit_are_closed_unread(tmp_path, monkeypatch):
    import socket
    import threading
    import time

    from ca_appliance import clientpage
    (tmp_path / "index.html").write_text("page")
    server = clientpage.make_server(tmp_path, ("127.0.0.1", 0))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    held = [socket.create_connection(server.server_address, timeout=5)
            for _ in range(clientpage.MAX_PER_CLIENT)]
    try:
        time.sleep(0.3)
        with socket.create_connection(server.server_address, timeout=5) as extra:
            assert extra.recv(100) == b""          # closed at once, never read
        with socket.create_connection(server.server_address, timeout=5, source_address=("127.0.0.2", 0)) as other:
            other.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert other.recv(100).startswith(b"HTTP/1.0 200")
    finally:
        for sock in held:
            sock.close()
        server.shutdown()
        server.server_close()
