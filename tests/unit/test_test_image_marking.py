"""A test image is marked where people look on the host side: the dist file names end in `-test` and
the OVA's product section and annotation say TEST IMAGE. The marking fails closed: a step-ca whose
version cannot be read makes a test image too. The build runs for real up to the disk (the base's
package bootstrap is replaced by a small raw file: that is not what is under test here)."""
import io
import shutil
import subprocess
import tarfile
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from image import build as build_mod
from image.config import load_config
from image.ova import OVF_NS, build_descriptor

pytestmark = pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="dpkg-deb makes the step-ca packages")


def step_ca_deb(tmp_path: Path, version: str) -> Path:
    """A real .deb of step-ca at `version` (what a local artifacts.step_ca.path may be)."""
    tree = tmp_path / f"pkg-{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(f"Package: step-ca\nVersion: {version}\nArchitecture: amd64\n"
                                         "Maintainer: test <test@example.org>\nDescription: test\n")
    out = tmp_path / f"step-ca_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(tree), str(out)], check=True, capture_output=True)
    return out


def unreadable_step_ca(tmp_path: Path) -> Path:
    """An x86-64 executable whose --version names no x.y.z (coreutils' `true` says "9.1")."""
    path = tmp_path / "step-ca"
    shutil.copy("/bin/true", path)
    return path


def config(tmp_path, step_ca: Path | None, formats=("raw",)):
    artifacts = {"step_cli": {"enabled": False}}
    if step_ca is not None:
        artifacts["step_ca"] = {"path": str(step_ca)}
    return load_config(overrides={"image": {"base": "debian", "formats": list(formats)}, "artifacts": artifacts})


@pytest.fixture
def fake_base(monkeypatch):
    def build_raw(cfg, *, workdir, runner, artifacts, payload, use_cache):
        workdir.mkdir(parents=True, exist_ok=True)
        raw = workdir / "disk.raw"
        with open(raw, "wb") as f:
            f.truncate(1024 * 1024)
        return build_mod.BaseResult(raw=raw, release="Debian 12 (test)", packages=[])
    base = types.SimpleNamespace(__name__="image.bases.fake", REQUIRED_TOOLS={}, NEEDS_ROOT=False,
                                 build_raw=build_raw)
    monkeypatch.setattr(build_mod, "get_base", lambda name: base)


def product(ovf_text: str) -> dict:
    root = ET.fromstring(ovf_text)
    ns = {"o": OVF_NS}
    section = root.find(".//o:ProductSection", ns)
    found = {tag: section.findtext(f"o:{tag}", namespaces=ns) for tag in ("Product", "Version", "FullVersion")}
    found["Annotation"] = root.findtext(".//o:AnnotationSection/o:Annotation", namespaces=ns)
    return found


@pytest.mark.parametrize("maker, test_only", [
    (lambda tmp: step_ca_deb(tmp, "0.30.2"), False),
    (lambda tmp: step_ca_deb(tmp, "0.19.0"), True),
    (lambda tmp: step_ca_deb(tmp, "0~git"), True),
    (unreadable_step_ca, True),
], ids=["0.30.2", "0.19.0", "no-version-in-package", "binary-says-no-version"])
def test_the_output_stem_ends_in_test_for_a_test_image(tmp_path, maker, test_only):
    cfg = config(tmp_path, maker(tmp_path))
    assert build_mod.output_stem(cfg) == "ca-appliance-1.1.0-debian" + ("-test" if test_only else "")


def test_a_release_pin_is_judged_by_its_version(tmp_path):
    assert build_mod.output_stem(config(tmp_path, None)) == "ca-appliance-1.1.0-debian"
    old = load_config(overrides={"image": {"base": "debian"}, "artifacts": {"step_ca": {"version": "0.28.0"}}})
    assert build_mod.output_stem(old).endswith("-test")


@pytest.mark.parametrize("version, test_only", [("0.30.2", False), ("0.19.0", True), ("0~git", True)])
def test_a_build_names_its_dist_files_and_marks_its_ova(tmp_path, fake_base, version, test_only):
    cfg = config(tmp_path, step_ca_deb(tmp_path, version), formats=("raw", "ova"))
    dist = tmp_path / "dist"
    published = build_mod.build_appliance(cfg, dist_dir=dist, build_dir=tmp_path / "build",
                                          out=io.StringIO())
    stem = "ca-appliance-1.1.0-debian" + ("-test" if test_only else "")
    assert sorted(p.name for p in published) == sorted(f"{stem}.{ext}" for ext in ("raw", "ova", "manifest.json"))
    assert f"{stem}.ova" in (dist / "SHA256SUMS").read_text()
    with tarfile.open(dist / f"{stem}.ova") as ova:
        shown = product(ova.extractfile("ca-appliance.ovf").read().decode())
    if test_only:
        assert "TEST IMAGE" in shown["Product"] and shown["Version"] == "1.1.0-test"
        assert "TEST IMAGE" in shown["FullVersion"] and "GHSA-h8cp-697h-8c8p" in shown["Annotation"]
    else:
        assert shown == {"Product": "CA appliance (step-ca)", "Version": "1.1.0",
                         "FullVersion": "1.1.0 (debian)", "Annotation": None}


def test_the_descriptor_of_a_config_with_an_unreadable_step_ca_is_marked(tmp_path):
    cfg = config(tmp_path, unreadable_step_ca(tmp_path))
    shown = product(build_descriptor(cfg, vmdk_name="d.vmdk", vmdk_size=1, capacity=1))
    assert "TEST IMAGE" in shown["Product"] and "could not be read" in shown["Annotation"]
