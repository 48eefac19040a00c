"""The newest-userland tier: the guest program's own tests, run inside a Debian unstable (sid) root
under sid's python3, cryptography, PyYAML and jwcrypto (the generation Fedora's next release ships),
with every DeprecationWarning the guest package causes turned into an error.

The sid root comes from mmdebstrap once and then from its cache (tests/helpers/sid_root.py); each
run unpacks a fresh copy, copies the working tree in and runs pytest there through chroot, in its
own mount and network namespaces (no mount outlives the run, no port clashes with the host's).
The inner run imports nothing from the host's .venv: only modules whose imports sid's packages
provide (INNER_TESTS), with the real step-ca built by `invoke step-from-source` mounted in.
"""
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import sid_root

from image.config import PROJECT_ROOT
from image.disk import remove_tree
from image.runner import Runner

# The guest-only test modules: answers and strict YAML, PKI, JOSE and ca.json (unit, and with a real
# step-ca), backup and restore, provision on a Fedora-layout and a Debian-layout root, the unattended
# sources, the trust store, the wizard on a terminal. Each imports only ca_appliance, the tests'
# helpers, pytest, pexpect and what the guest itself needs (cryptography, yaml, jwcrypto).
INNER_TESTS = (
    "tests/unit/test_guest_answers.py",
    "tests/unit/test_guest_cajson.py",
    "tests/unit/test_guest_database.py",
    "tests/unit/test_guest_firewall.py",
    "tests/unit/test_guest_pki.py",
    "tests/unit/test_guest_provision.py",
    "tests/unit/test_guest_sources.py",
    "tests/unit/test_guest_system.py",
    "tests/unit/test_guest_truststore.py",
    "tests/integration/test_ca_setup.py",
    "tests/integration/test_ca_backup.py",
    "tests/integration/test_ca_provisioners.py",
    "tests/integration/test_hostile_answers.py",
    "tests/integration/test_setup_interrupted.py",
    "tests/integration/test_sources_same_cajson.py",
    "tests/integration/test_wizard.py",
)
INNER_TIMEOUT = 40 * 60
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def say(capsys, text):
    with capsys.disabled():
        print(f"\n[newest-userland] {text}", flush=True)


@pytest.fixture
def sid_tree(tmp_path):
    """A fresh sid root with the working tree in it; removed afterwards, passed or failed."""
    if os.geteuid() != 0:
        pytest.skip("the sid root is bootstrapped and entered with chroot: needs root")
    for tool in ("mmdebstrap", "unshare", "chroot", "zstd"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing (host-packages.txt)")
    runner = Runner(tmp_path / "sid-root.log")
    rootfs = tmp_path / "root"
    started = time.monotonic()
    try:
        from_cache = sid_root.ensure_sid_root(rootfs, runner)
        root_seconds = time.monotonic() - started
        sid_root.copy_working_tree(PROJECT_ROOT, rootfs / sid_root.SRC.lstrip("/"))
        sid_root.install_warning_filters(rootfs)
        (rootfs / "etc/hosts").write_text(HOSTS)
        yield rootfs, from_cache, root_seconds
    finally:
        remove_tree(rootfs, runner)


def step_binaries_binds() -> tuple[dict[str, str], tuple[str, ...]]:
    """step-ca and step as `invoke step-from-source` built them (static Go binaries), and the Go
    toolchain that built them, mounted read-only where the inner step_binaries fixture finds them:
    it checks the cached build against go.mod and the Go version, and builds nothing."""
    from image.cache import cache_dir
    from image.errors import UserError
    from image.stepbuild import TOOLS, find_go, pinned_binaries, required_go

    try:
        pinned_binaries()
        go_root = Path(find_go(required_go(TOOLS[0]))).resolve().parents[1]
    except UserError as error:
        pytest.skip(f"no step-ca to run the inner integration tests against: {error}")
    return ({str(go_root): str(go_root), str(cache_dir() / "go"): f"{sid_root.INNER_CACHE}/go"},
            (str(go_root / "bin"),))


def chroot_run(rootfs: Path, *command: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(sid_root.chroot_command(rootfs, *command, **kwargs), capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_guest_tests_pass_under_sid_without_deprecations(sid_tree, capsys):
    rootfs, from_cache, root_seconds = sid_tree
    say(capsys, f"sid root {'from the cache' if from_cache else 'bootstrapped by mmdebstrap'} "
                f"in {root_seconds:.0f} s")
    binds, path = step_binaries_binds()

    versions = chroot_run(rootfs, "python3", "-c", sid_root.VERSIONS_CODE)
    assert versions.returncode == 0, versions.stderr
    say(capsys, f"ran under {versions.stdout.strip()}")
    inner = tuple(int(x) for x in re.match(r"python3 (\d+)\.(\d+)", versions.stdout).groups())
    # the point of the tier: a newer Python than the oldest base's (Debian 12: 3.11), which the host suite uses
    assert inner > (3, 11), versions.stdout

    # the filters are live: a deprecation in a guest module fails, one inside a third party does not
    probe = ("import warnings\n"
             "def warn(module):\n"
             "    exec('import warnings; warnings.warn(\"old\", DeprecationWarning)', {'__name__': module})\n"
             "warn('yaml.constructor')\n"
             "try:\n    warn('ca_appliance.pki')\nexcept DeprecationWarning:\n    print('guest: error')\n")
    checked = chroot_run(rootfs, "python3", "-c", probe)
    assert checked.stdout.strip() == "guest: error", checked.stdout + checked.stderr

    started = time.monotonic()
    result = chroot_run(rootfs, *sid_root.inner_pytest_command(list(INNER_TESTS)), timeout=INNER_TIMEOUT,
                        binds=binds, path=path)
    lines = result.stdout.strip().splitlines()
    say(capsys, f"inner pytest in {time.monotonic() - started:.0f} s: {lines[-1] if lines else '(no output)'}")
    tail = "\n".join(lines[-120:])
    assert result.returncode == 0, f"inner pytest exited {result.returncode}:\n{tail}\n{result.stderr[-3000:]}"
    assert re.search(r"\d+ passed", lines[-1]), tail
    # every skip says why; none of them may hide a module that could not be imported under sid
    assert "ImportError" not in result.stdout and "ModuleNotFoundError" not in result.stdout, tail


if __name__ == "__main__":   # pragma: no cover - `python tests/newest/test_guest_on_sid.py` for a quick look
    sys.exit(pytest.main([__file__, "-s"]))
