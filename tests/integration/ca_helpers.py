"""Helpers for the guest CA tool's integration tests: the CLI run as the appliance runs it
(/usr/bin/python3: Debian 12's cryptography 38 and jwcrypto 1.1) and a real step-ca process.
"""
import json
import os
import pty
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml
from helpers.wizard import CLI as CA_APPLIANCE
from helpers.wizard import GUEST_PYTHON

from image.runner import stop_process

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "integration-test-password-7f3k9q2x"
HEALTH_TIMEOUT = 60


def guest_python_ready():
    """None when /usr/bin/python3 has the guest's libraries, else why not."""
    if not Path(GUEST_PYTHON).exists():
        return f"{GUEST_PYTHON} is missing"
    probe = subprocess.run([GUEST_PYTHON, "-c", "import cryptography, yaml, jwcrypto"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"{GUEST_PYTHON} lacks python3-cryptography/python3-yaml/python3-jwcrypto: {probe.stderr.strip()}"
    return None


def as_appliance(env):
    """The CLI's environment with the pinned step-ca findable as the appliance's own (the appliance
    reads `step-ca version` from /usr/bin; here the pinned build comes first on PATH, alone: not the
    step CLI). Without a readable step-ca the appliance cannot show it has the GHSA-h8cp-697h-8c8p
    fix and calls itself a test image (buildinfo.test_image_reason fails closed)."""
    from image.stepbuild import cached_pinned_binary
    env = dict(os.environ if env is None else env)
    try:
        binary = cached_pinned_binary("step_ca")
    except Exception:  # no Go here: the tests that need step-ca skip, saying why
        binary = None
    if binary is not None:
        directory = REPO / "build" / "test-step-ca-on-path"
        directory.mkdir(parents=True, exist_ok=True)
        link = directory / "step-ca"
        if not link.is_symlink() or link.resolve() != Path(binary).resolve():
            fresh = directory / f".step-ca.{os.getpid()}"
            fresh.unlink(missing_ok=True)
            fresh.symlink_to(binary)
            os.replace(fresh, link)  # atomic: a parallel test never sees no step-ca
        env["PATH"] = f"{directory}:{env.get('PATH', os.defpath)}"
    return env


def run_cli(*args, check=True, input_text=None, env=None):
    """Run the guest CLI as the appliance does (distro python3, stdin not a terminal)."""
    env = as_appliance(env)
    result = subprocess.run([GUEST_PYTHON, str(CA_APPLIANCE), *map(str, args)], capture_output=True, text=True,
                            input=input_text if input_text is not None else "", env=env, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"ca-appliance {' '.join(map(str, args))} exited {result.returncode}:\n"
                             f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result



def run_cli_on_terminal(*args):
    """The guest CLI with stdin and stdout on a pseudo-terminal (a person at a console); stderr apart.
    Returns (exit status, what the terminal showed, stderr)."""
    master, slave = pty.openpty()
    process = subprocess.Popen([GUEST_PYTHON, str(CA_APPLIANCE), *map(str, args)], stdin=slave, stdout=slave,
                               stderr=subprocess.PIPE, text=False)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    stderr = process.stderr.read().decode()
    return process.wait(timeout=300), shown.decode().replace("\r\n", "\n"), stderr

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers_for(port, **ca_overrides):
    """Answers for a loopback CA: reached as localhost and 127.0.0.1 on `port`."""
    ca = {"name": "Integration CA", "dns_names": ["localhost", "127.0.0.1"], "address": f"127.0.0.1:{port}",
          "provisioner": "admin@test.example", "password": PASSWORD, "ssh": True}
    ca.update(ca_overrides)
    return {"hostname": "ca.test.example", "network": {"mode": "dhcp"}, "ca": ca}


class CA:
    """A CA set up by the CLI under `prefix` (nothing outside it is touched: --no-system)."""

    def __init__(self, prefix, port, answers):
        self.prefix = Path(prefix)
        self.port = port
        self.answers = answers
        self.steppath = self.prefix / "etc/step-ca"
        self.ca_json = self.steppath / "config/ca.json"
        self.root = self.steppath / "certs/root_ca.crt"
        self.intermediate = self.steppath / "certs/intermediate_ca.crt"
        self.password_file = self.steppath / "password.txt"
        self.url = f"https://localhost:{port}"
        self.setup_output = None

    def setup(self, *extra, check=True):
        answers_file = self.prefix.parent / f"{self.prefix.name}-answers.yaml"
        answers_file.write_text(yaml.safe_dump(self.answers))
        result = run_cli("setup", "--answers", answers_file, "--prefix", self.prefix, "--no-system", *extra,
                         check=check)
        self.setup_output = result
        return result

    @property
    def config(self):
        return json.loads(self.ca_json.read_text())

    def provisioner(self, kind):
        return next(p for p in self.config["authority"]["provisioners"] if p["type"] == kind)

    def ssl_context(self):
        return ssl.create_default_context(cafile=str(self.root))


class StepCA:
    """A running step-ca for a CA; always stopped by stop(), its log kept for failures."""

    def __init__(self, binary, ca, log_path):
        self.binary, self.ca, self.log_path = binary, ca, Path(log_path)
        self.process = None

    def start(self):
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(self.binary), "--password-file", str(self.ca.password_file), str(self.ca.ca_json)],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=self.ca.prefix, start_new_session=True)
        deadline = time.monotonic() + HEALTH_TIMEOUT
        context = self.ca.ssl_context()
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"step-ca exited {self.process.returncode} at start:\n{self.log_text()}")
            try:
                with urllib.request.urlopen(f"{self.ca.url}/health", context=context, timeout=2) as response:
                    if json.load(response).get("status") == "ok":
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"step-ca not healthy within {HEALTH_TIMEOUT}s:\n{self.log_text()}")
            time.sleep(0.2)

    def stop(self):
        stop_process(self.process, grace=15)
        self.process = None
        if getattr(self, "log", None):
            self.log.close()
            self.log = None

    def log_text(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log)"


def step_ca_refuses(binary, ca, timeout=60):
    """None when the real step-ca loads the CA's ca.json, opens its keys and says READY=1 (the
    sd_notify it sends once it serves); else what it said. It is stopped at once either way."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="notify-") as tmp:
        notify = os.path.join(tmp, "notify")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(notify)
        listener.settimeout(0.2)
        log = Path(tmp) / "step-ca.log"
        with open(log, "wb") as out:
            process = subprocess.Popen([str(binary), "--password-file", str(ca.password_file), str(ca.ca_json)],
                                       env=dict(os.environ, NOTIFY_SOCKET=notify), cwd=ca.prefix,
                                       stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    if b"READY=1" in listener.recv(4096):
                        return None
                except TimeoutError:
                    pass
                if process.poll() is not None:
                    return f"exit {process.returncode}: {log.read_text(errors='replace')[-800:]}"
            return f"no READY=1 within {timeout}s: {log.read_text(errors='replace')[-800:]}"
        finally:
            stop_process(process, grace=10)
            listener.close()


def openssl_verify(root, intermediate, leaf_pem_path):
    """openssl verify of a leaf against root + intermediate; returns the CompletedProcess."""
    return subprocess.run(["openssl", "verify", "-CAfile", str(root), "-untrusted", str(intermediate),
                           str(leaf_pem_path)], capture_output=True, text=True)
