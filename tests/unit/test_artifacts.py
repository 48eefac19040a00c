"""Release artifacts without a network: asset names, checksums.txt parsing, what a local `path` may be,
and the progress bar. Downloads against a real HTTP server are in tests/integration/test_fetch.py."""
import hashlib
import io
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from image.artifacts import (
    RPM_LEAD_MAGIC,
    Artifact,
    detect_kind,
    fetch_artifacts,
    parse_checksums,
    release_asset_name,
)
from image.config import load_config
from image.download import ProgressBar
from image.errors import UserError

HOST_ELF = Path("/usr/bin/true")
needs_x86_64 = pytest.mark.skipif(platform.machine() != "x86_64",
                                  reason="the ELF checks use this host's /usr/bin/true as an x86-64 executable")


def make_rpm(path: Path) -> Path:
    # a 96-byte RPM lead (magic, v3.0, binary, i386/x86_64 arch 1, name) then some payload
    lead = RPM_LEAD_MAGIC + bytes([3, 0, 0, 0, 0, 1]) + b"step-ca-0.30.2-1".ljust(66, b"\0") + bytes(24)
    path.write_bytes(lead + b"\x8e\xad\xe8\x01" + bytes(200))
    return path


def make_deb(path: Path) -> Path:
    root = path.parent / (path.name + ".root")
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy(HOST_ELF, root / "usr/bin/step-ca")
    (root / "DEBIAN/control").write_text(
        "Package: step-ca\nVersion: 0.30.2-1\nArchitecture: amd64\n"
        "Maintainer: Test <test@example.org>\nDescription: test package\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(path)],
                   check=True, capture_output=True)
    return path


def path_config(base, path, sha256=None):
    return load_config(overrides={"image": {"base": base}, "artifacts": {
        "step_ca": {"path": str(path), "sha256": sha256}, "step_cli": {"enabled": False}}})


def test_asset_names_are_smallsteps_package_names():
    assert release_asset_name("step-ca", "0.30.2", "deb") == "step-ca_0.30.2-1_amd64.deb"
    assert release_asset_name("step-ca", "0.30.2", "rpm") == "step-ca-0.30.2-1.x86_64.rpm"
    assert release_asset_name("step-cli", "0.30.6", "deb") == "step-cli_0.30.6-1_amd64.deb"
    assert release_asset_name("step-cli", "0.30.6", "rpm") == "step-cli-0.30.6-1.x86_64.rpm"


def test_checksums_file_is_parsed_like_sha256sum():
    a, b = "a" * 64, "B" * 64
    sums = parse_checksums(f"{a}  step-ca_0.30.2-1_amd64.deb\n{b} *step-ca-0.30.2-1.x86_64.rpm\n"
                           "not a checksum line\n\n")
    assert sums == {"step-ca_0.30.2-1_amd64.deb": a, "step-ca-0.30.2-1.x86_64.rpm": "b" * 64}


def test_kind_is_read_from_the_file_not_its_name(tmp_path):
    assert detect_kind(make_rpm(tmp_path / "x.deb")) == "rpm"
    assert detect_kind(make_deb(tmp_path / "x.rpm")) == "deb"
    (tmp_path / "notes.deb").write_text("hello\n")
    assert detect_kind(tmp_path / "notes.deb") is None
    # an ar archive that is not a Debian package
    (tmp_path / "lib.a").write_bytes(b"!<arch>\n" + b"foo.o/          ".ljust(60, b" ") + b"\n")
    assert detect_kind(tmp_path / "lib.a") is None


@needs_x86_64
def test_elf_must_be_an_x86_64_executable(tmp_path):
    assert detect_kind(HOST_ELF) == "binary"
    head = bytearray(HOST_ELF.read_bytes()[:64])
    head[18:20] = (183).to_bytes(2, "little")  # EM_AARCH64
    (tmp_path / "arm").write_bytes(bytes(head))
    assert detect_kind(tmp_path / "arm") is None
    head[18:20] = (62).to_bytes(2, "little")
    head[16:18] = (1).to_bytes(2, "little")  # ET_REL: an object file, not an executable
    (tmp_path / "obj").write_bytes(bytes(head))
    assert detect_kind(tmp_path / "obj") is None


@pytest.mark.parametrize("base,make,kind", [("fedora", make_rpm, "rpm"), ("debian", make_deb, "deb")])
def test_local_package_of_the_bases_kind_is_used_as_is(tmp_path, base, make, kind):
    pkg = make(tmp_path / f"step-ca.{kind}")
    cfg = path_config(base, pkg)
    [artifact] = fetch_artifacts(cfg, progress=False)
    assert artifact == Artifact("step-ca", "local", kind, pkg,
                                hashlib.sha256(pkg.read_bytes()).hexdigest())


@needs_x86_64
@pytest.mark.parametrize("base", ["fedora", "debian"])
def test_local_elf_binary_is_accepted_by_both_bases(tmp_path, base):
    binary = shutil.copy(HOST_ELF, tmp_path / "step-ca")
    [artifact] = fetch_artifacts(path_config(base, binary), progress=False)
    assert artifact.kind == "binary" and artifact.path == Path(binary)


@pytest.mark.parametrize("base,make,allowed", [
    ("debian", make_rpm, "an amd64 .deb or an x86-64 ELF executable"),
    ("fedora", make_deb, "an x86_64 .rpm or an x86-64 ELF executable"),
])
def test_local_package_of_the_other_kind_is_refused(tmp_path, base, make, allowed):
    pkg = make(tmp_path / "step-ca.pkg")
    with pytest.raises(UserError) as e:
        fetch_artifacts(path_config(base, pkg), progress=False)
    msg = str(e.value)
    assert e.value.exit_code == 2 and "\n" not in msg
    assert "artifacts.step_ca.path" in msg and str(pkg) in msg and allowed in msg


def test_local_file_that_is_no_package_is_refused(tmp_path):
    (tmp_path / "step-ca").write_text("#!/bin/sh\necho not really\n")
    with pytest.raises(UserError, match=r"artifacts\.step_ca\.path: .*neither a package nor an x86-64 executable"):
        fetch_artifacts(path_config("debian", tmp_path / "step-ca"), progress=False)


def test_sha256_pin_applies_to_local_files_and_never_deletes_them(tmp_path):
    pkg = make_rpm(tmp_path / "step-ca.rpm")
    digest = hashlib.sha256(pkg.read_bytes()).hexdigest()
    [ok] = fetch_artifacts(path_config("fedora", pkg, sha256=digest.upper()), progress=False)
    assert ok.sha256 == digest
    with pytest.raises(UserError) as e:
        fetch_artifacts(path_config("fedora", pkg, sha256="0" * 64), progress=False)
    assert "artifacts.step_ca.sha256 pins " + "0" * 64 in str(e.value) and digest in str(e.value)
    assert pkg.exists()


class FakeTty(io.StringIO):
    def isatty(self):
        return True


def test_progress_on_a_terminal_is_one_updating_line():
    out = FakeTty()
    bar = ProgressBar("step-ca.rpm", 50_000_000, out)
    for received in range(0, 50_000_001, 250_000):
        bar.update(received)
    bar.done(50_000_000)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("step-ca.rpm 100% 50.0/50.0 MB\n")
    assert "\rstep-ca.rpm  50% 25.0/50.0 MB" in text


def test_progress_in_a_log_is_a_few_whole_lines():
    out = io.StringIO()
    bar = ProgressBar("step-ca.rpm", 50_000_000, out)
    for received in range(0, 50_000_001, 250_000):
        bar.update(received)
    bar.done(50_000_000)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines == ["step-ca.rpm   0% 0.0/50.0 MB", "step-ca.rpm  25% 12.5/50.0 MB", "step-ca.rpm  50% 25.0/50.0 MB",
                     "step-ca.rpm  75% 37.5/50.0 MB", "step-ca.rpm 100% 50.0/50.0 MB"]
