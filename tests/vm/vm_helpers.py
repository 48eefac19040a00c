"""Helpers the checks in tests/vm share (a module of its own: `conftest` is not importable by name
when several test directories are collected together)."""
import re
import shlex
import subprocess
from pathlib import Path

from image.bench.jwk_client import fetch_root  # noqa: F401  (re-exported for the checks)

# The name certbot asks a certificate for; the guest resolves it to QEMU's guestfwd address.
CHALLENGE_NAME = "client.verify.test"


def status_text(host) -> str:
    result = host.run("ca-appliance status")
    assert result.rc == 0, f"ca-appliance status exited {result.rc}: {result.stderr or result.stdout}"
    return result.stdout


def owners_and_modes(host, *paths: str) -> dict:
    """{path: (owner, group, mode) or None when it does not exist}, from one `stat` in the guest: each
    command over SSH costs the emulated CPU ~0.45 s (sudo, a shell), three per file with testinfra's
    File.user/.group/.mode."""
    out = host.run("stat -c '%U %G %a %n' -- " + " ".join(map(shlex.quote, paths)) + " 2>/dev/null; true").stdout
    found = {}
    for line in out.splitlines():
        user, group, mode, name = line.split(" ", 3)
        found[name] = (user, group, int(mode, 8))
    return {path: found.get(path) for path in paths}


def owner_group_mode(host, path: str) -> tuple[str, str, int] | None:
    """owners_and_modes for one path."""
    return owners_and_modes(host, path)[path]


def described(entry: tuple[str, str, int] | None) -> str:
    """An owners_and_modes entry as a failure message shows it: 'step:step 0600', or 'missing'."""
    return "missing" if entry is None else f"{entry[0]}:{entry[1]} {entry[2]:04o}"


def fingerprint_in(status: str) -> str:
    """The root fingerprint `ca-appliance status` prints (hex, colons or not), lower-case, no colons."""
    match = re.search(r"root fingerprint[^:\n]*:\s*([0-9A-Fa-f:]{64,95})", status)
    assert match, f"`ca-appliance status` prints no root fingerprint:\n{status}"
    return match.group(1).replace(":", "").lower()


def certbot_certonly(certbot, target, name, *extra):
    """A certificate for `name` over http-01: certbot's standalone server listens where the guest's
    challenge connections arrive (QEMU guestfwd -> socat -> 127.0.0.1:challenge_port)."""
    return certbot("certonly", "--standalone", "-d", name, "--agree-tos", "--register-unsafely-without-email",
                   "--http-01-address", "127.0.0.1", "--http-01-port", str(target.challenge_port),
                   "--cert-name", name, *extra)


def openssl_verify(root: Path, chain: Path, leaf: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", "verify", "-CAfile", str(root), "-untrusted", str(chain), str(leaf)],
                          capture_output=True, text=True)
