"""step-ca.service is Type=notify plus wait-serving: the pinned step-ca tells systemd READY=1 once its
keys are open, but in the same instant it starts its listener (a fresh-clone CI run saw READY=1
and then "connection refused"), so the unit's ExecStartPost waits for the port. Together "started"
means serving. Checked with the real step-ca and a real notification socket, the way systemd
hands one to a service (NOTIFY_SOCKET, a datagram socket), and the real script under bash."""
import json
import os
import socket
import subprocess
import urllib.request
from pathlib import Path

from helpers.units import directives

OVERLAY = Path(__file__).resolve().parents[2] / "overlay"
UNIT = OVERLAY / "etc/systemd/system/step-ca.service"
WAIT_SERVING = OVERLAY / "usr/libexec/ca-appliance/wait-serving"


def test_the_unit_waits_for_step_cas_own_readiness():
    unit = directives(UNIT)
    assert unit[("Service", "Type")] == ["notify"]
    assert unit[("Service", "NotifyAccess")] == ["main"]
    assert unit[("Service", "ExecStartPost")] == ["/usr/libexec/ca-appliance/wait-serving"]


def test_step_ca_says_ready_only_when_it_answers(make_ca, step_ca_binary, tmp_path):
    ca = make_ca()
    notify_path = tmp_path / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(60)
    process = subprocess.Popen([str(step_ca_binary), "--password-file", str(ca.password_file), str(ca.ca_json)],
                               env=dict(os.environ, NOTIFY_SOCKET=str(notify_path)), cwd=ca.prefix,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        message = listener.recv(4096).decode()
        assert "READY=1" in message
        # what systemd runs next: once it returns, the CA answers at once, no retry loop needed
        subprocess.run(["bash", str(WAIT_SERVING), str(ca.ca_json), "60"], check=True, timeout=90)
        with urllib.request.urlopen(f"{ca.url}/health", context=ca.ssl_context(), timeout=10) as response:
            assert json.load(response) == {"status": "ok"}
    finally:
        process.kill()
        process.wait()
        listener.close()


def test_wait_serving_gives_up_in_one_line_when_nothing_listens(tmp_path):
    with socket.socket() as probe:      # a port nothing listens on (bound, never listening)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        config = tmp_path / "ca.json"
        config.write_text(json.dumps({"root": "/x", "address": f"127.0.0.1:{port}", "db": {}}, indent=2))
        result = subprocess.run(["bash", str(WAIT_SERVING), str(config), "1"], capture_output=True, text=True,
                                timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"wait-serving: step-ca said READY but nothing accepts on 127.0.0.1:{port} after 1s"]


def test_wait_serving_reads_every_listen_address_form(tmp_path):
    """":PORT", "0.0.0.0:PORT" and "[::]:PORT" (all addresses) are reached on loopback."""
    for family, bind_host, form in ((socket.AF_INET, "127.0.0.1", ":{}"), (socket.AF_INET, "127.0.0.1", "0.0.0.0:{}"),
                                    (socket.AF_INET6, "::1", "[::]:{}"), (socket.AF_INET6, "::1", "[::1]:{}")):
        with socket.socket(family) as server:
            server.bind((bind_host, 0))
            server.listen()
            config = tmp_path / "ca.json"
            config.write_text(json.dumps({"address": form.format(server.getsockname()[1])}, indent=2))
            result = subprocess.run(["bash", str(WAIT_SERVING), str(config), "5"], capture_output=True, text=True,
                                    timeout=30)
            assert result.returncode == 0, (form, result.stderr)
