"""CA nodes on the host for the failover soak: the guest CLI run as the appliance runs it (the distro
python3, `--prefix DIR --no-system`) and the pinned step-ca serving each prefix as a host process
(as tests/integration/ca_helpers.py does for the integration tests)."""
from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

from image.config import PROJECT_ROOT
from image.errors import StepFailed
from image.runner import probe, stop_process

GUEST_PYTHON = "/usr/bin/python3"
GUEST_CLI = PROJECT_ROOT / "overlay" / "usr" / "bin" / "ca-appliance"
PASSWORD = "soak-ca-password-not-secret-7f3k9q2x"
HEALTH_TIMEOUT = 60


def step_ca_binary() -> Path:
    from image.stepbuild import cached_pinned_binary
    binary = cached_pinned_binary("step_ca")
    if binary is None:
        raise StepFailed("find step-ca", "no pinned step-ca is built: run `invoke step-from-source` first")
    return Path(binary)


def guest_env(workdir: Path) -> dict:
    """PATH with the pinned step-ca alone first (the CLI reads `step-ca version` to judge the build);
    the variables to add to this process's environment."""
    directory = workdir / "step-ca-on-path"
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / "step-ca"
    if not link.is_symlink():
        link.symlink_to(step_ca_binary())
    return {"PATH": f"{directory}:{os.environ.get('PATH', os.defpath)}"}


def run_cli(workdir: Path, *args) -> subprocess.CompletedProcess:
    result = probe([GUEST_PYTHON, GUEST_CLI, *args], timeout=300, env=guest_env(workdir), input="")
    if result is None:
        raise StepFailed(f"ca-appliance {args[0]}", f"{GUEST_PYTHON} did not run it or it did not finish in 300 s")
    if result.returncode != 0:
        raise StepFailed(f"ca-appliance {args[0]}", f"exit {result.returncode}: {result.stderr.strip()[-400:]}")
    return result


def answers_for(port: int, database: dict) -> dict:
    return {"hostname": "ca.soak.test", "network": {"mode": "dhcp"},
            "ca": {"name": "Soak CA", "dns_names": ["localhost", "127.0.0.1"], "address": f"127.0.0.1:{port}",
                   "provisioner": "admin@soak.test", "password": PASSWORD, "ssh": False, "database": database}}


class Node:
    """One CA node under `prefix`, served by the pinned step-ca on 127.0.0.1:port."""

    def __init__(self, prefix: Path, port: int):
        self.prefix, self.port = Path(prefix), port
        steppath = self.prefix / "etc/step-ca"
        self.ca_json, self.password_file = steppath / "config/ca.json", steppath / "password.txt"
        self.root, self.intermediate = steppath / "certs/root_ca.crt", steppath / "certs/intermediate_ca.crt"
        self.log_path = self.prefix.parent / f"step-ca-{port}.log"
        self.process = None

    def setup(self, workdir: Path, database: dict) -> None:
        answers = workdir / f"{self.prefix.name}-answers.yaml"
        answers.write_text(yaml.safe_dump(answers_for(self.port, database)))
        run_cli(workdir, "setup", "--answers", answers, "--prefix", self.prefix, "--no-system")

    def join(self, workdir: Path, first: Node) -> None:
        """Become a node of `first`'s CA: from a backup of it (encrypted, as every backup)."""
        passphrase = workdir / "backup-passphrase"
        passphrase.write_text("soak-backup-passphrase-not-secret\n")
        archive = workdir / f"{first.prefix.name}-backup.tar.gz"
        run_cli(workdir, "backup", "--prefix", first.prefix, "--no-system", "--out", archive,
                "--passphrase-file", passphrase)
        run_cli(workdir, "join", "--from", archive, "--prefix", self.prefix, "--no-system",
                "--passphrase-file", passphrase, "--address", f"127.0.0.1:{self.port}")

    def start(self) -> Node:
        with open(self.log_path, "ab") as log:
            # long-lived: the node serves until it is killed or stopped
            self.process = subprocess.Popen(
                [str(step_ca_binary()), "--password-file", str(self.password_file), str(self.ca_json)],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.prefix, start_new_session=True)
        context = ssl.create_default_context(cafile=str(self.root))
        deadline = time.monotonic() + HEALTH_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise StepFailed("start step-ca", f"exit {self.process.returncode}", self.log_path)
            try:
                with urllib.request.urlopen(f"https://localhost:{self.port}/health", context=context,
                                            timeout=2) as response:
                    if json.load(response).get("status") == "ok":
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise StepFailed("start step-ca", f"not healthy within {HEALTH_TIMEOUT}s", self.log_path)
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL, no goodbye (a node lost)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        stop_process(self.process, grace=15)
        self.process = None
