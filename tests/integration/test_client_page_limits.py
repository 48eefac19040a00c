"""The client page server under hostile connections, as the real process (the guest CLI under the
distro python, handed its socket the way ca-appliance-page.socket does): request bytes reach its log
(the journal) escaped, a thousand idle connections are cut after the idle timeout, its threads stay
bounded, and a client from another address is still served meanwhile."""
import resource
import socket
import subprocess
import time
from pathlib import Path

import pytest
from ca_appliance import clientpage  # its limits, read by the tests
from ca_helpers import CA, CA_APPLIANCE, GUEST_PYTHON, answers_for, free_port
from test_client_page import wait_for_port

from image.runner import stop_process

IDLE = 1000
SYSTEMD_NOFILE = 1024  # a service's soft LimitNOFILE under systemd: what the appliance's server gets


def as_a_service():
    resource.setrlimit(resource.RLIMIT_NOFILE, (SYSTEMD_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


@pytest.fixture
def server(tmp_path):
    """(port, process, log path) of a real page server on a socket-activated loopback port."""
    port = free_port()
    ca = CA(tmp_path / "ca", port, answers_for(port, dns_names=["ca.lab.example", "127.0.0.1"]))
    ca.setup()
    page_port = free_port()
    log_path = tmp_path / "page.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(
        ["systemd-socket-activate", "--listen", f"0.0.0.0:{page_port}",
         GUEST_PYTHON, str(CA_APPLIANCE), "serve-page", "--prefix", str(ca.prefix)],
        stdout=log, stderr=subprocess.STDOUT, preexec_fn=as_a_service)
    try:
        wait_for_port(page_port, process)
        yield page_port, process, log_path
    finally:
        stop_process(process, grace=10)
        log.close()


def get(port, path="/", source="127.0.0.2", timeout=10):
    """The status code of a GET sent from `source` (another loopback address than the idle crowd's)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: ca\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split()[1])


def threads_of(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no thread count")


def test_request_bytes_reach_the_log_escaped(server):
    port, process, log_path = server
    hostile = [b"GET /\x1b[2J\x1b]0;owned\x07\r/x HTTP/1.0\r\nHost: ca\r\n\r\n",
               b"\x1b[31mNOT HTTP\x07\r\n\r\n",
               b"GET /" + b"A" * 5000 + b" HTTP/1.0\r\n\r\n"]
    for request in hostile:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            while sock.recv(65536):
                pass
    assert get(port) == 200
    time.sleep(0.5)
    log = log_path.read_bytes()
    for raw in (b"\x1b", b"\x07", b"\r"):
        assert raw not in log, log[-2000:]
    text = log.decode()
    assert "\\x1b[2J\\x1b]0;owned\\x07\\x0d/x" in text
    assert "\\x1b[31mNOT HTTP\\x07" in text
    assert max(len(line) for line in text.splitlines()) < clientpage.LOG_MAX + 60
    assert "more characters" in text


def test_a_thousand_idle_connections_are_cut_bounded_and_deny_no_one(server):
    port, process, _ = server
    idle = []
    try:
        for _ in range(IDLE):
            sock = socket.socket()
            sock.settimeout(5)
            sock.connect(("127.0.0.1", port))
            idle.append(sock)
        time.sleep(1)
        # the crowd is held (at most MAX_PER_CLIENT of it) or already shut out; the server's threads
        # are bounded (a connection's thread and its deadline timer each), and another address is served
        assert threads_of(process.pid) <= 2 * clientpage.MAX_CONNECTIONS + 4
        started = time.monotonic()
        assert get(port) == 200 and get(port, "/root.pem") == 200
        assert time.monotonic() - started < 5
        # after the idle timeout every idle connection has been closed by the server
        time.sleep(clientpage.REQUEST_TIMEOUT + 3)
        still_open = 0
        for sock in idle:
            try:
                sock.settimeout(0.5)
                if sock.recv(1) != b"":
                    still_open += 1
            except (ConnectionResetError, BrokenPipeError):
                pass
            except TimeoutError:
                still_open += 1
        assert still_open == 0, f"{still_open} of {IDLE} idle connections are still open"
        assert process.poll() is None
        assert get(port) == 200
    finally:
        for sock in idle:
            sock.close()
