"""A throwaway MariaDB or PostgreSQL on loopback (its own data directory, no systemd) and a
round-robin TCP proxy standing in for the load balancer in front of several CA nodes: for the
failover soak (moved here from tests/integration/cluster_helpers.py, which the integration tests
still use; host code does not import tests).
"""
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from image.errors import StepFailed
from image.runner import checked_output, probe, stop_process
from image.vm.qemu import free_port

MARIADB_START_TIMEOUT = 60
POSTGRESQL_BIN = Path("/usr/lib/postgresql/15/bin")   # Debian 12's PostgreSQL 15 (host-packages.txt)
POSTGRESQL_START_TIMEOUT = 60


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
        checked_output("mysql_install_db", ["mysql_install_db", "--no-defaults", f"--datadir={self.datadir}",
                                            "--user=root", "--auth-root-authentication-method=socket",
                                            "--skip-test-db"], timeout=120)
        # long-lived: the server runs for the campaign
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
                raise StepFailed("database server", f"mariadbd did not start:\n{self.log_text()}")
            time.sleep(0.2)
        return self

    def sql(self, statement, check=True):
        """Run SQL as root over the socket; returns the CompletedProcess (tab-separated rows, no headers)."""
        result = probe(["mariadb", "--no-defaults", f"--socket={self.socket}", "-u", "root", "-N", "-B",
                        "-e", statement], timeout=30)
        if result is None:
            result = subprocess.CompletedProcess(["mariadb"], 124, "", "mariadb did not run or answer in 30 s")
        if check and result.returncode != 0:
            raise StepFailed("database server", f"SQL {statement!r} failed: {result.stderr}")
        return result

    def add_user(self, user, password, database):
        """A user that may create and use `database` only (a name or a LIKE pattern: what step-ca needs)."""
        self.sql(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'; "
                 f"GRANT ALL PRIVILEGES ON `{database}`.* TO '{user}'@'127.0.0.1'")

    def dsn(self, user, password):
        return f"{user}:{password}@tcp(127.0.0.1:{self.port})/"

    kind = "mysql"

    def add_step_user(self, user, password):
        """A user that may create and use the databases stepca* (what step-ca needs), nothing else."""
        self.add_user(user, password, "stepca%")

    def count_rows(self, database, table):
        return int(self.sql(f"SELECT COUNT(*) FROM `{database}`.`{table}`").stdout.strip())

    def tables(self, database):
        return sorted(self.sql(f"SHOW TABLES FROM `{database}`").stdout.split())

    def stop(self):
        stop_process(self.process, grace=30)
        self.process = None

    def log_text(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log)"


def postgresql_missing():
    """None when Debian's PostgreSQL 15 server is installed (and, as root, its postgres user), else why not."""
    for tool in ("initdb", "pg_ctl", "psql"):
        if not (POSTGRESQL_BIN / tool).exists():
            return f"{POSTGRESQL_BIN / tool} is missing: apt-get install postgresql-15 (host-packages.txt)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "the postgres user is missing (PostgreSQL refuses to run as root)"
        if shutil.which("runuser") is None:
            return "runuser is missing (util-linux)"
    return None


class PostgreSQL:
    """PostgreSQL 15 on 127.0.0.1:PORT with a fresh cluster in a temporary directory, started and
    stopped with pg_ctl (no systemd, no pg_ctlcluster). PostgreSQL refuses to run as root, so as root
    the cluster belongs to the postgres user (runuser). TCP logins need a password (scram-sha-256);
    the superuser `postgres` logs in over the cluster's own socket directory (trust, 0700)."""

    def __init__(self):
        self.port = free_port()
        self.workdir = None
        self.datadir = None
        self.log_path = None

    def _as_owner(self, *command, timeout=120, check=True):
        if os.geteuid() == 0:
            command = ("runuser", "-u", "postgres", "--", *command)
        result = probe(command, timeout=timeout)
        if result is None:
            result = subprocess.CompletedProcess(command, 124, "", f"{command[0]} did not run or finish in {timeout} s")
        if check and result.returncode != 0:
            raise StepFailed("database server", f"{command} failed: {result.stdout}{result.stderr}\n{self.log_text()}")
        return result

    def start(self):
        # Under /tmp, not pytest's tmp_path: that is 0700 root's, and the server runs as postgres.
        self.workdir = Path(tempfile.mkdtemp(prefix="ca-appliance-pg-"))
        self.datadir, self.log_path = self.workdir / "data", self.workdir / "postgresql.log"
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.workdir, owner.pw_uid, owner.pw_gid)
        try:
            self._as_owner(POSTGRESQL_BIN / "initdb", "-D", self.datadir, "-U", "postgres", "--auth-local=trust",
                           "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C")
            options = (f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off "
                       "-c shared_buffers=16MB -c max_connections=60")
            self._as_owner(POSTGRESQL_BIN / "pg_ctl", "-D", self.datadir, "-l", self.log_path, "-o", options,
                           "-w", "-t", str(POSTGRESQL_START_TIMEOUT), "start", timeout=POSTGRESQL_START_TIMEOUT + 30)
            self.sql("SELECT 1")
        except BaseException:
            self.stop()
            raise
        return self

    def sql(self, statement, database="postgres", check=True):
        """Run SQL as the superuser over the socket; returns the CompletedProcess (unaligned rows, no headers)."""
        return self._as_owner(POSTGRESQL_BIN / "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                              "-h", self.workdir, "-p", self.port, "-U", "postgres", "-d", database,
                              "-c", statement, timeout=30, check=check)

    def add_user(self, user, password, createdb=True):
        """A login that may create its databases (step-ca creates the database when it is missing);
        as their owner it may create tables in them, which PostgreSQL 15 grants no one else."""
        self.sql(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'" + (" CREATEDB" if createdb else ""))

    def dsn(self, user, password):
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/"

    kind = "postgresql"

    def add_step_user(self, user, password):
        """A login that may create databases; it owns what it creates, so step-ca may make its tables."""
        self.add_user(user, password, createdb=True)

    def count_rows(self, database, table):
        return int(self.sql(f'SELECT COUNT(*) FROM "{table}"', database=database).stdout.strip())

    def tables(self, database):
        return sorted(self.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
                               database=database).stdout.split())

    def stop(self):
        """Stop the server (fast, then immediate) and remove the cluster; safe to call twice."""
        if self.workdir is None:
            return
        if (self.datadir / "postmaster.pid").exists():
            stopped = self._as_owner(POSTGRESQL_BIN / "pg_ctl", "-D", self.datadir, "-m", "fast", "-w", "-t", "30",
                                     "stop", check=False, timeout=60)
            if stopped.returncode != 0:
                self._as_owner(POSTGRESQL_BIN / "pg_ctl", "-D", self.datadir, "-m", "immediate", "-w", "stop",
                               check=False, timeout=60)
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None

    def log_text(self):
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(errors="replace")


def server_missing(kind):
    return mariadb_missing() if kind == "mysql" else postgresql_missing()


@contextlib.contextmanager
def database_server(kind, workdir):
    """A started MariaDB or PostgreSQL server, stopped (and its files removed) when the block ends,
    also on failure; StepFailed saying what to install when the server is missing."""
    problem = server_missing(kind)
    if problem:
        raise StepFailed(f"start {kind}", f"the failover soak needs Debian's {kind} server: {problem}")
    server = MariaDB(workdir) if kind == "mysql" else PostgreSQL()
    server.start()
    try:
        yield server
    finally:
        server.stop()


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
