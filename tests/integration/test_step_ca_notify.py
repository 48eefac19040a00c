"""step-ca.service is Type=notify: the pinned step-ca tells systemd READY=1 once it serves, so
"started" means serving. Checked with the real step-ca and a real notification socket, the way
systemd hands one to a service (NOTIFY_SOCKET, a datagram socket)."""
import json
import os
import socket
import subprocess
import urllib.request
from pathlib import Path

from helpers.units import directives

UNIT = Path(__file__).resolve().parents[2] / "overlay/etc/systemd/system/step-ca.service"


def test_the_unit_waits_for_step_cas_own_readiness():
    unit = directives(UNIT)
    assert unit[("Service", "Type")] == ["notify"]
    assert unit[("Service", "NotifyAccess")] == ["main"]


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
        # READY came after the keys were opened: the CA answers at once, no retry loop needed
        with urllib.request.urlopen(f"{ca.url}/health", context=ca.ssl_context(), timeout=10) as response:
            assert json.load(response) == {"status": "ok"}
    finally:
        process.kill()
        process.wait()
        listener.close()
