"""`invoke step-from-source` refusing what it cannot build: another version than go.mod pins, and a
module proxy that does not answer (the real Go toolchain against a closed loopback port, with an
empty module cache): exit 2 and one line saying what to do, nothing cached."""
import socket

import pytest

from image.errors import UserError
from image.stepbuild import TOOLS, build_tool, pinned_version


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_version_other_than_the_pinned_one_names_the_go_get_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CA_APPLIANCE_CACHE", str(tmp_path / "cache"))
    step_ca = TOOLS[0]
    with pytest.raises(UserError) as refused:
        build_tool(step_ca, "0.29.9", log=lambda *_: None)
    message = str(refused.value)
    assert message.startswith("config error: artifacts.step_ca.version: '0.29.9'") and "\n" not in message
    assert f"pins {step_ca.module} v{pinned_version(step_ca)}" in message
    assert f"go get {step_ca.module}@v0.29.9" in message
    assert not (tmp_path / "cache").exists()


def test_an_unreachable_module_proxy_is_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("CA_APPLIANCE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GOMODCACHE", str(tmp_path / "modcache"))   # nothing downloaded yet
    monkeypatch.setenv("GOPROXY", f"http://127.0.0.1:{closed_port()}")
    step_cli = TOOLS[1]
    with pytest.raises(UserError) as refused:
        build_tool(step_cli, pinned_version(step_cli), log=lambda *_: None)
    assert refused.value.exit_code == 2
    message = str(refused.value)
    assert "the Go module proxy cannot be reached" in message and "artifacts.step_cli.path" in message
    assert "\n" not in message
    assert not [p for p in (tmp_path / "cache").rglob(step_cli.binary) if p.is_file()]   # nothing cached
