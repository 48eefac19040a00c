"""`fetch` against a real HTTP server on loopback, laid out like the GitHub releases it stands in for:
<repo>/v<version>/<asset> and <repo>/v<version>/checksums.txt, with generated package files."""
import hashlib
import os
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from image.artifacts import RPM_LEAD_MAGIC, fetch_artifacts, release_asset_name
from image.config import PROJECT_ROOT, load_config
from image.errors import StepFailed, UserError

CA_VERSION, CLI_VERSION = "0.30.2", "0.30.6"
KIND = {"fedora": "rpm", "debian": "deb"}


class ReleaseServer:
    """Serves `files` (URL path -> bytes); records every request; cuts the paths in `truncate` short."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                # a truncated reply promises more than it sends, then hangs up
                extra = 1000 if self.path in server.truncate else 0
                self.send_header("Content-Length", str(len(body) + extra))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def publish(self, repo, name, version, kind, *, body=None, listed_digest=None, listed=True):
        """Put a package and its checksums.txt line into release <repo>/v<version>; returns the body."""
        asset = release_asset_name(name, version, kind)
        if body is None:
            magic = RPM_LEAD_MAGIC if kind == "rpm" else b"!<arch>\ndebian-binary   "
            body = magic + os.urandom(3 * 1024 * 1024)  # several read chunks, so progress shows
        self.files[f"/{repo}/v{version}/{asset}"] = body
        sums_path = f"/{repo}/v{version}/checksums.txt"
        sums = self.files.get(sums_path, b"0" * 64 + b"  " + f"{name}_{version}_darwin_amd64.tar.gz\n".encode())
        if listed:
            digest = listed_digest or hashlib.sha256(body).hexdigest()
            sums += f"{digest}  {asset}\n".encode()
        self.files[sums_path] = sums
        return body

    def downloads(self):
        return [r for r in self.requests if not r.endswith("checksums.txt")]


@pytest.fixture
def server():
    s = ReleaseServer()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CA_APPLIANCE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def overrides(server, base="fedora", **artifacts):
    over = {"image": {"base": base}, "artifacts": {
        "step_ca": {"url": f"{server.url}/certificates", "version": CA_VERSION},
        "step_cli": {"url": f"{server.url}/cli", "version": CLI_VERSION},
    }}
    for key, values in artifacts.items():
        over["artifacts"][key].update(values)
    return over


def config(server, base="fedora", **artifacts):
    return load_config(overrides=overrides(server, base, **artifacts))


def cached_files(cache):
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())


@pytest.mark.parametrize("base", ["fedora", "debian"])
def test_fetch_downloads_verifies_and_reuses_the_cache(server, cache, base, capsys):
    kind = KIND[base]
    ca = server.publish("certificates", "step-ca", CA_VERSION, kind)
    cli = server.publish("cli", "step-cli", CLI_VERSION, kind)
    # the other base's package is in the release too, and must not be fetched
    server.publish("certificates", "step-ca", CA_VERSION, "deb" if kind == "rpm" else "rpm")

    artifacts = fetch_artifacts(config(server, base))

    assert [(a.name, a.version, a.kind) for a in artifacts] == [
        ("step-ca", CA_VERSION, kind), ("step-cli", CLI_VERSION, kind)]
    ca_asset = release_asset_name("step-ca", CA_VERSION, kind)
    assert artifacts[0].path == cache / "releases/step-ca" / CA_VERSION / ca_asset
    assert artifacts[0].path.read_bytes() == ca and artifacts[1].path.read_bytes() == cli
    assert artifacts[0].sha256 == hashlib.sha256(ca).hexdigest()
    assert len(server.downloads()) == 2
    assert "100%" in capsys.readouterr().err

    requests_before = len(server.requests)
    again = fetch_artifacts(config(server, base))
    assert again == artifacts
    assert len(server.requests) == requests_before, "a verified cached file is not downloaded again"
    assert "cached, verified" in capsys.readouterr().err


def test_a_damaged_cached_file_is_downloaded_again(server, cache):
    body = server.publish("certificates", "step-ca", CA_VERSION, "rpm")
    [first] = fetch_artifacts(config(server, step_cli={"enabled": False}), progress=False)
    first.path.write_bytes(body[:-1] + b"X")
    [second] = fetch_artifacts(config(server, step_cli={"enabled": False}), progress=False)
    assert second.path.read_bytes() == body
    assert len(server.downloads()) == 2


def test_step_cli_disabled_means_no_step_cli_artifact(server, cache):
    server.publish("certificates", "step-ca", CA_VERSION, "rpm")
    artifacts = fetch_artifacts(config(server, step_cli={"enabled": False}), progress=False)
    assert [a.name for a in artifacts] == ["step-ca"]
    assert not any(r.startswith("/cli/") for r in server.requests)


def test_unknown_version_is_a_user_error_naming_url_and_version(server, cache):
    server.publish("certificates", "step-ca", CA_VERSION, "rpm")
    with pytest.raises(UserError) as e:
        fetch_artifacts(config(server, step_ca={"version": "0.30.99"}), progress=False)
    msg = str(e.value)
    assert e.value.exit_code == 2 and "\n" not in msg
    assert f"{server.url}/certificates/v0.30.99/checksums.txt" in msg and "HTTP 404" in msg
    assert "'0.30.99'" in msg and "check artifacts.step_ca.version" in msg


def test_listed_but_missing_package_is_a_404_error(server, cache):
    server.publish("certificates", "step-ca", CA_VERSION, "rpm")
    del server.files[f"/certificates/v{CA_VERSION}/{release_asset_name('step-ca', CA_VERSION, 'rpm')}"]
    with pytest.raises(UserError, match="HTTP 404"):
        fetch_artifacts(config(server, step_cli={"enabled": False}), progress=False)
    assert not list((cache / "releases/step-ca" / CA_VERSION).glob("*.rpm*"))


def test_digest_mismatch_deletes_the_file_and_names_both_digests(server, cache):
    listed = "ab" * 32
    body = server.publish("certificates", "step-ca", CA_VERSION, "rpm", listed_digest=listed)
    with pytest.raises(StepFailed) as e:
        fetch_artifacts(config(server, step_cli={"enabled": False}), progress=False)
    msg = str(e.value)
    assert e.value.exit_code == 1 and "\n" not in msg
    assert release_asset_name("step-ca", CA_VERSION, "rpm") in msg
    assert f"expected sha256 {listed}" in msg and f"got {hashlib.sha256(body).hexdigest()}" in msg
    assert cached_files(cache) == [f"releases/step-ca/{CA_VERSION}/checksums.txt"]


def test_truncated_download_is_an_error_and_nothing_is_cached(server, cache):
    server.publish("certificates", "step-ca", CA_VERSION, "rpm")
    server.truncate.add(f"/certificates/v{CA_VERSION}/{release_asset_name('step-ca', CA_VERSION, 'rpm')}")
    with pytest.raises(StepFailed, match="cut short"):
        fetch_artifacts(config(server, step_cli={"enabled": False}), progress=False)
    assert cached_files(cache) == [f"releases/step-ca/{CA_VERSION}/checksums.txt"]

    server.truncate.clear()  # the next run downloads it whole
    [artifact] = fetch_artifacts(config(server, step_cli={"enabled": False}), progress=False)
    assert artifact.path.exists()


def test_truncated_checksums_file_is_not_cached(server, cache):
    server.publish("certificates", "step-ca", CA_VERSION, "rpm")
    server.truncate.add(f"/certificates/v{CA_VERSION}/checksums.txt")
    with pytest.raises(StepFailed, match="cut short"):
        fetch_artifacts(config(server, step_cli={"enabled": False}), progress=False)
    assert cached_files(cache) == []


def test_package_missing_from_checksums_is_a_clear_error(server, cache):
    server.publish("certificates", "step-ca", CA_VERSION, "rpm", listed=False)
    with pytest.raises(UserError) as e:
        fetch_artifacts(config(server, step_cli={"enabled": False}), progress=False)
    msg = str(e.value)
    assert "artifacts.step_ca.version" in msg and "checksums.txt" in msg
    assert release_asset_name("step-ca", CA_VERSION, "rpm") in msg
    assert server.downloads() == [], "nothing unverifiable is downloaded"


def test_pin_mismatch_deletes_the_file(server, cache):
    body = server.publish("certificates", "step-ca", CA_VERSION, "rpm")
    pin = "cd" * 32
    with pytest.raises(StepFailed) as e:
        fetch_artifacts(config(server, step_ca={"sha256": pin}, step_cli={"enabled": False}), progress=False)
    msg = str(e.value)
    assert "artifacts.step_ca.sha256" in msg and f"expected sha256 {pin}" in msg
    assert f"got {hashlib.sha256(body).hexdigest()}" in msg
    assert cached_files(cache) == [f"releases/step-ca/{CA_VERSION}/checksums.txt"]


def test_matching_pin_is_accepted(server, cache):
    body = server.publish("certificates", "step-ca", CA_VERSION, "rpm")
    digest = hashlib.sha256(body).hexdigest()
    [artifact] = fetch_artifacts(config(server, step_ca={"sha256": digest}, step_cli={"enabled": False}),
                                 progress=False)
    assert artifact.sha256 == digest


def closed_port():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_points_at_offline_builds(cache):
    port = closed_port()
    cfg = load_config(overrides={"artifacts": {"step_ca": {"url": f"http://127.0.0.1:{port}/certificates"}}})
    with pytest.raises(StepFailed) as e:
        fetch_artifacts(cfg, progress=False)
    msg = str(e.value)
    assert f"cannot reach 127.0.0.1:{port}" in msg and "\n" not in msg
    assert "artifacts.step_ca.path" in msg and "invoke step-from-source" in msg


def test_unreachable_step_cli_release_says_how_to_do_without(server, cache):
    server.publish("certificates", "step-ca", CA_VERSION, "rpm")
    port = closed_port()
    with pytest.raises(StepFailed) as e:
        fetch_artifacts(config(server, step_cli={"url": f"http://127.0.0.1:{port}/cli"}), progress=False)
    assert "artifacts.step_cli.path" in str(e.value) and "artifacts.step_cli.enabled: false" in str(e.value)


# --- through the real CLI


def invoke_fetch(config_file, cache, *args):
    env = dict(os.environ, CA_APPLIANCE_CACHE=str(cache))
    return subprocess.run([str(PROJECT_ROOT / ".venv/bin/invoke"), "fetch", "--config", str(config_file), *args],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)


def write_config(tmp_path, data):
    path = tmp_path / "appliance.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_fetch_succeeds_and_shows_progress(server, tmp_path):
    server.publish("certificates", "step-ca", CA_VERSION, "deb")
    server.publish("cli", "step-cli", CLI_VERSION, "deb")
    result = invoke_fetch(write_config(tmp_path, overrides(server, "debian")), tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert "100%" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "cache/releases/step-cli" / CLI_VERSION / f"step-cli_{CLI_VERSION}-1_amd64.deb").exists()


def test_cli_base_option_picks_the_package_kind(server, tmp_path):
    server.publish("certificates", "step-ca", CA_VERSION, "rpm")
    result = invoke_fetch(write_config(tmp_path, overrides(server, "debian", step_cli={"enabled": False})),
                          tmp_path / "cache", "--base", "fedora")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cache/releases/step-ca" / CA_VERSION / f"step-ca-{CA_VERSION}-1.x86_64.rpm").exists()


@pytest.mark.parametrize("case,status,needle", [
    ("unknown version", 2, "HTTP 404"),
    ("digest mismatch", 1, "expected sha256 " + "ab" * 32),
    ("wrong local kind", 2, "artifacts.step_ca.path"),
])
def test_cli_errors_are_one_line_with_the_right_status(server, tmp_path, case, status, needle):
    data = overrides(server, "fedora", step_cli={"enabled": False})
    if case == "unknown version":
        data["artifacts"]["step_ca"]["version"] = "0.30.99"
    elif case == "digest mismatch":
        server.publish("certificates", "step-ca", CA_VERSION, "rpm", listed_digest="ab" * 32)
    else:
        (tmp_path / "step-ca.deb").write_bytes(b"!<arch>\ndebian-binary   " + bytes(100))
        data["artifacts"]["step_ca"]["path"] = str(tmp_path / "step-ca.deb")
    result = invoke_fetch(write_config(tmp_path, data), tmp_path / "cache")
    assert result.returncode == status, result.stderr
    lines = result.stderr.strip().splitlines()
    # progress lines may come first; the error is one line, the last
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], result.stderr
    assert needle in lines[-1] and "Traceback" not in result.stderr
    assert not list(Path(tmp_path / "cache").rglob("*.rpm"))
