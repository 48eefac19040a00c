"""Fixtures for the guest CA tool's integration tests: a CA made by the real CLI, served by a
real step-ca (the release appliance.yaml pins, built from its Go module) on a free loopback port.
"""
import socket

import pytest
from ca_helpers import CA, StepCA, answers_for, free_port, guest_python_ready, step_ca_refuses


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Let fixtures see whether the test failed (to dump step-ca's log then)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def step_binaries():
    """{"step_ca": path, "step_cli": path}: the pinned releases (`invoke step-from-source`, cached)."""
    from image.errors import UserError
    from image.stepbuild import pinned_binaries

    try:
        return pinned_binaries()
    except UserError as error:  # no Go 1.25+ or no module proxy: the line says what to do
        pytest.skip(f"no step-ca to test against: {error}")


@pytest.fixture(scope="session")
def step_ca_binary(step_binaries):
    return step_binaries["step_ca"]


@pytest.fixture(scope="session")
def step_cli_binary(step_binaries):
    return step_binaries["step_cli"]


@pytest.fixture(scope="session", autouse=True)
def _guest_python():
    problem = guest_python_ready()
    if problem:
        pytest.skip(f"integration tests run the guest CLI under the distro python: {problem}")


@pytest.fixture
def make_ca(tmp_path, step_ca_binary):
    """make_ca(**ca_overrides) -> a CA set up by the CLI in a fresh prefix, on a free port; the
    ca.json setup wrote is loaded by the real step-ca (0.30's own rules) before the test sees it."""
    count = 0

    def make(**ca_overrides):
        nonlocal count
        count += 1
        port = free_port()
        ca = CA(tmp_path / f"ca{count}", port, answers_for(port, **ca_overrides))
        ca.setup()
        refused = step_ca_refuses(step_ca_binary, ca)
        assert refused is None, f"step-ca 0.30 does not take the ca.json setup wrote: {refused}"
        return ca

    return make


@pytest.fixture
def serve(step_ca_binary, tmp_path, request):
    """serve(ca) -> a StepCA running for it; stopped after the test, its log printed if the test failed."""
    running = []

    def start(ca):
        server = StepCA(step_ca_binary, ca, tmp_path / f"step-ca-{ca.port}.log")
        running.append(server)
        return server.start()

    yield start
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for server in running:
        server.stop()
        if failed:
            print(f"\n---- step-ca log ({server.log_path}) ----\n{server.log_text()}")


@pytest.fixture
def running_ca(make_ca, serve):
    """A default CA (EC P-256, SSH on), served."""
    ca = make_ca()
    serve(ca)
    return ca


@pytest.fixture
def port_80_free():
    """certbot --standalone and acme-tiny's server bind 127.0.0.1:80: skip (saying why) when that is impossible."""
    try:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 80))
    except OSError as error:
        pytest.skip(f"http-01 needs 127.0.0.1:80 (root, and nothing else on it): {error}")
    return True
