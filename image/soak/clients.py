"""ACME clients issuing in a loop for the failover soak: certbot (one account, --webroot) and
acme-tiny (one account key, a new connection per request, so one order crosses both nodes). Every
attempt is counted; a failed attempt is retried by the next one."""
from __future__ import annotations

import functools
import http.server
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from image.runner import checked_output, probe

VENV_BIN = Path(sys.executable).parent
NAME = "localhost"


@dataclass
class Tally:
    """What one client did: every attempt's outcome, the serials it got, the last error."""
    client: str
    attempts: int = 0
    issued: int = 0
    failed: int = 0
    retried: int = 0           # attempts made right after a failed one
    serials: list = field(default_factory=list)
    last_ok: bool = True
    last_error: str = ""

    def record(self, serial: int | None, error: str = "") -> None:
        self.attempts += 1
        if not self.last_ok:
            self.retried += 1
        if serial is None:
            self.failed += 1
            self.last_ok, self.last_error = False, error
        else:
            self.issued += 1
            self.serials.append(serial)
            self.last_ok = True

    def as_dict(self) -> dict:
        return {"client": self.client, "attempts": self.attempts, "issued": self.issued, "failed": self.failed,
                "retried": self.retried, "last_ok": self.last_ok, "last_error": self.last_error[-300:] or None}


class ChallengeServer:
    """http-01 answers from `webroot` on 127.0.0.1:80 (both clients write their tokens there)."""

    def __init__(self, webroot: Path):
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        handler = functools.partial(Quiet, directory=str(webroot))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 80), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class Certbot:
    def __init__(self, url: str, root: Path, workdir: Path, webroot: Path):
        self.url, self.root, self.workdir, self.webroot = url, root, workdir, webroot

    def _run(self, *args) -> subprocess.CompletedProcess:
        """certbot's finished process; exit 124 (as timeout(1) says) when it could not run or hung."""
        dirs = ["--config-dir", self.workdir / "config", "--work-dir", self.workdir / "work",
                "--logs-dir", self.workdir / "logs"]
        cmd = [VENV_BIN / "certbot", *args, "-n", *dirs, "--server", f"{self.url}/acme/acme/directory"]
        done = probe(cmd, timeout=180, env={"REQUESTS_CA_BUNDLE": str(self.root)})
        return done or subprocess.CompletedProcess(cmd, 124, "", "certbot did not run or finish within 180 s")

    def register(self) -> subprocess.CompletedProcess:
        return self._run("register", "--agree-tos", "--register-unsafely-without-email")

    def order(self) -> tuple[int | None, str]:
        result = self._run("certonly", "--webroot", "-w", str(self.webroot), "-d", NAME, "--cert-name", "soak",
                           "--force-renewal")
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            return None, lines[-1] if lines else f"exit {result.returncode}"
        leaf = x509.load_pem_x509_certificate((self.workdir / "config/live/soak/cert.pem").read_bytes())
        return leaf.serial_number, ""


class AcmeTiny:
    def __init__(self, url: str, root: Path, workdir: Path, challenges: Path):
        self.url, self.root, self.workdir, self.challenges = url, root, workdir, challenges
        workdir.mkdir(parents=True, exist_ok=True)
        self.account_key, self.csr = workdir / "account.key", workdir / "domain.csr"
        checked_output("acme-tiny's account key", ["openssl", "genrsa", "-out", str(self.account_key), "2048"])
        checked_output("acme-tiny's CSR", ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                                           "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(workdir / "domain.key"),
                                           "-subj", f"/CN={NAME}", "-addext", f"subjectAltName=DNS:{NAME}",
                                           "-out", str(self.csr)])

    def order(self) -> tuple[int | None, str]:
        result = probe([VENV_BIN / "acme-tiny", "--account-key", self.account_key, "--csr", self.csr,
                        "--acme-dir", self.challenges, "--directory-url", f"{self.url}/acme/acme/directory",
                        "--disable-check"], timeout=180, env={"SSL_CERT_FILE": str(self.root)})
        if result is None:
            return None, "acme-tiny did not run or finish within 180 s"
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            return None, lines[-1] if lines else f"exit {result.returncode}"
        return x509.load_pem_x509_certificate(result.stdout.encode()).serial_number, ""


def issue_until(client, tally: Tally, deadline: float, stop: threading.Event) -> None:
    """Order certificates one after another until `deadline` (or `stop`)."""
    while time.monotonic() < deadline and not stop.is_set():
        try:
            serial, error = client.order()
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            serial, error = None, f"{type(e).__name__}: {e}"
        tally.record(serial, error)
        if serial is None:
            time.sleep(1)   # a client's back-off before its retry
