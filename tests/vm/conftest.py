"""Checks of a booted appliance. They run inside `invoke verify`, which boots the VM and hands it
over with its pytest plugin (image.vm.verify.TargetPlugin, through the config's stash); run on their
own, they skip and say so.

Fixtures: `target` (image.vm.verify.Target: the VM, its ports, the answers it was set up with),
`host` (testinfra over SSH with sudo, renewed after a reboot), `root_pem` (the root fetched from
the appliance through the forwarded CA port), `status_fingerprint`, `jwk` (issue certificates
with the JWK provisioner from the host), `certbot` (run certbot against the appliance).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from vm_helpers import CHALLENGE_NAME, fetch_root, fingerprint_in, status_text

from image.bench.jwk_client import JWKClient
from image.vm.verify import target_key

CERTBOT = Path(sys.executable).parent / "certbot"


@pytest.fixture(scope="session")
def target(request):
    found = request.config.stash.get(target_key(), None)
    if found is None:
        pytest.skip("tests/vm check a booted appliance: run them with `invoke verify --image FILE`")
    return found


@pytest.fixture
def host(target):
    return target.host()


@pytest.fixture(scope="session")
def base(target):
    return target.host().system_info.distribution


@pytest.fixture(scope="session")
def ca_url(target):
    """The appliance's CA as the host reaches it (through the forwarded port; 127.0.0.1 is in its names)."""
    return f"https://127.0.0.1:{target.ca_port}"


@pytest.fixture(scope="session")
def guest_ca_url(target):
    """The CA's URL as clients on the network name it (what its tokens' audience must say)."""
    port = target.guest_ca_port
    return f"https://{target.ca_name}" + ("" if port == 443 else f":{port}")


@pytest.fixture(scope="session")
def root_pem(target, ca_url):
    path = target.vm.workdir / "root_ca.crt"
    path.write_bytes(fetch_root(ca_url))
    return path


@pytest.fixture(scope="session")
def status_fingerprint(target):
    return fingerprint_in(status_text(target.host()))


@pytest.fixture(scope="session")
def jwk(target, ca_url, guest_ca_url, root_pem):
    if not target.password:
        pytest.skip("the answers let the appliance generate its CA password, so the JWK key cannot be opened")
    return JWKClient(ca_url, root_pem, target.password, audience_base=guest_ca_url)


@pytest.fixture(scope="session")
def challenge_name_resolves(target):
    """The guest resolves CHALLENGE_NAME to QEMU's guestfwd address (relayed to certbot on the host)."""
    from image.vm.verify import CHALLENGE_IP
    line = f"{CHALLENGE_IP} {CHALLENGE_NAME}"
    target.host().run(f"grep -qxF '{line}' /etc/hosts || echo '{line}' >> /etc/hosts")
    return CHALLENGE_NAME


@pytest.fixture(scope="session")
def certbot(target, ca_url, root_pem, challenge_name_resolves):
    """certbot(*args) against the appliance's ACME directory, one config dir (one account) per run."""
    workdir = target.vm.workdir / "certbot"

    def run(*args):
        env = dict(os.environ, REQUESTS_CA_BUNDLE=str(root_pem))
        dirs = ["--config-dir", workdir / "config", "--work-dir", workdir / "work", "--logs-dir", workdir / "logs"]
        return subprocess.run([str(CERTBOT), *args, "-n", *map(str, dirs),
                               "--server", f"{ca_url}/acme/acme/directory"],
                              capture_output=True, text=True, env=env, timeout=600)

    run.config_dir = workdir / "config"
    return run
