"""Helpers for the several-appliances tests: a throwaway MariaDB on loopback (its own datadir,
no systemd) and a round-robin TCP proxy standing in for the load balancer in front of the nodes.
"""
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from ca_helpers import free_port

from image.runner import stop_process

MARIADB_START_TIMEOUT = 60


def mariadb_missing():
    """None when Debian's mariadb-server is installed, else why the test cannot run."""
    for tool in ("mysql_install_db", "mariadb"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: apt-get install mariadb-server (host-packages.txt)"
    if _server_binary() is None:
        return "neither mariadbd nor mysqld is installed: apt-get install mariadb-server"
    return None


def _server_binary():
    for name in ("mariadbd", "mysqld"):
        for directory in ("/usr/sbin", "/usr/bin"):
            if Path(directory, name).exists():
                return str(Path(directory, name))
    return shutil.which("mariadbd") or shutil.which("mysqld")


class MariaDB:
    """mariadbd on 127.0.0.1:PORT with a fresh datadir under WORKDIR; root logs in over its socket."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.datadir = self.workdir / "data"
        self.socket = self.workdir / "mysqld.sock"
        self.log_path = self.workdir / "mariadbd.log"
        self.port = free_port()
        self.process = None

    def start(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mysql_install_db", "--no-defaults", f"--datadir={self.datadir}", "--user=root",
                        "--auth-root-authentication-method=socket", "--skip-test-db"],
                       check=True, capture_output=True, timeout=120)
        self.process = subprocess.Popen(
            [_server_binary(), "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
             f"--port={self.port}", "--bind-address=127.0.0.1", "--user=root", "--skip-log-bin",
             f"--pid-file={self.workdir / 'mariadbd.pid'}", f"--log-error={self.log_path}",
             "--innodb-buffer-pool-size=32M"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + MARIADB_START_TIMEOUT
        while self.sql("SELECT 1", check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"mariadbd did not start:\n{self.log_text()}")
            time.sleep(0.2)
        return self

    def sql(self, statement, check=True):
        """Run SQL as root over the socket; returns the CompletedProcess (tab-separated rows, no headers)."""
        result = subprocess.run(["mariadb", "--no-defaults", f"--socket={self.socket}", "-u", "root", "-N", "-B",
                                 "-e", statement], capture_output=True, text=True, timeout=30)
        if check and result.returncode != 0:
            raise AssertionError(f"SQL {statement!r} failed: {result.stderr}")
        return result

    def add_user(self, user, password, database):
        """A user that may create and use `database` only (a name or a LIKE pattern: what step-ca needs)."""
        self.sql(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'; "
                 f"GRANT ALL PRIVILEGES ON `{database}`.* TO '{user}'@'127.0.0.1'")

    def dsn(self, user, password):
        return f"{user}:{password}@tcp(127.0.0.1:{self.port})/"

    def stop(self):
        stop_process(self.process, grace=30)
        self.process = None

    def log_text(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log)"


class RoundRobinProxy:
    """Accepts TCP connections on 127.0.0.1:PORT and hands each to the next backend in turn; a
    backend that refuses the connection is skipped (a load balancer's health check, in one line).
    `served[port]` counts the connections each backend took."""

    def __init__(self, backend_ports):
        self.backends = list(backend_ports)
        self.served = {port: 0 for port in self.backends}
        self._next = 0
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stopping.set()
        self._listener.close()
        self._thread.join(timeout=5)

    def _accept_loop(self):
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _connect_backend(self):
        with self._lock:
            order = [self.backends[(self._next + i) % len(self.backends)] for i in range(len(self.backends))]
            self._next = (self._next + 1) % len(self.backends)
        for port in order:
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                continue
            upstream.settimeout(None)
            with self._lock:
                self.served[port] += 1
            return upstream
        return None

    def _serve(self, client):
        upstream = self._connect_backend()
        if upstream is None:
            client.close()
            return
        pump = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        pump.start()
        _pump(client, upstream)
        pump.join(timeout=60)
        client.close()
        upstream.close()


def _pump(source, sink):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    try:
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass
