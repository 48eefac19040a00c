"""A base is one module and one registry row: a throwaway base registered in image.bases is built by
`invoke build`'s own code, which takes every distribution fact from it (tools, package format, update
units and files, the OVA's guest OS); an unknown base or package format is an error, never an else.

The throwaway base is the one thing stubbed here, and it is the input: config validation, artifact
fetching (a file:// release), the payload, the raw and OVA writers and the manifest are the real ones."""
import hashlib
import json
import tarfile
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from image import bases
from image.artifacts import RPM_LEAD_MAGIC, fetch_artifacts, local_artifact, release_asset_name
from image.bases import BaseResult, get_base
from image.build import build_appliance, preflight
from image.config import ConfigError, load_config
from image.errors import UserError
from image.payload import generated_files, provision_input

TOY_UPDATES_CONF = "etc/toy/updates.conf"


def toy_module(name="toy", **overrides) -> types.ModuleType:
    """A base in a dozen lines: the facts the Base protocol asks for, and a build_raw that writes a small
    raw disk and remembers what the build handed it."""
    toy = types.ModuleType(name)
    toy.REQUIRED_TOOLS = {"qemu-img": ("qemu-utils", "qemu-img")}
    toy.NEEDS_ROOT = False
    toy.PROVISION_BASE = name
    toy.PACKAGE_KIND = "rpm"
    toy.UPDATE_UNITS = ("toy-updates.timer",)
    toy.UPDATE_SERVICE = "toy-updates.service"
    toy.UPDATE_FILES = {TOY_UPDATES_CONF: "security_only = yes\n"}
    toy.OVA_GUEST_OS = (36, "otherLinux64Guest", "Toy Linux (64-bit)")
    toy.seen = {}

    def check_host():
        toy.seen["check_host"] = True

    def build_raw(cfg, *, workdir, runner, artifacts, payload, use_cache=True):
        workdir.mkdir(parents=True)
        raw = workdir / "disk.raw"
        with open(raw, "wb") as disk:
            disk.truncate(4 * 2**20)
        with tarfile.open(payload) as tar:
            toy.seen["payload"] = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        toy.seen["artifacts"] = [(a.name, a.kind, Path(a.path).name) for a in artifacts]
        return BaseResult(raw=raw, release="Toy Linux 1", packages=["toybox 1.0"])

    toy.check_host, toy.build_raw = check_host, build_raw
    for key, value in overrides.items():
        setattr(toy, key, value)
    return toy


@pytest.fixture
def toy():
    module = toy_module()
    bases.register("toy", module)
    try:
        yield module
    finally:
        bases.unregister("toy")


def make_rpm(path: Path) -> Path:
    lead = RPM_LEAD_MAGIC + bytes([3, 0, 0, 0, 0, 1]) + b"step-ca-0.30.2-1".ljust(66, b"\0") + bytes(24)
    path.write_bytes(lead + b"\x8e\xad\xe8\x01" + bytes(200))
    return path


def toy_release(tmp_path: Path, version: str) -> str:
    """A file:// release directory holding step-ca's RPM (the toy's package kind) and its checksums.txt."""
    release = tmp_path / "releases" / f"v{version}"
    release.mkdir(parents=True)
    asset = make_rpm(release / release_asset_name("step-ca", version, "rpm"))
    digest = hashlib.sha256(asset.read_bytes()).hexdigest()
    (release / "checksums.txt").write_text(f"{digest}  {asset.name}\n")
    return (tmp_path / "releases").as_uri()


def test_a_registered_base_is_a_base_config_validation_accepts(toy):
    assert "toy" in bases.base_names() and get_base("toy") is toy
    cfg = load_config(overrides={"image": {"base": "toy"}})
    assert cfg.image.base == "toy"


def test_the_build_takes_every_distribution_fact_from_the_registered_base(toy, tmp_path, monkeypatch):
    monkeypatch.setenv("CA_APPLIANCE_CACHE", str(tmp_path / "cache"))
    version = load_config().artifacts.step_ca.version
    cfg = load_config(overrides={"image": {"base": "toy"}, "updates": {"security": True},
                                 "artifacts": {"step_ca": {"url": toy_release(tmp_path, version)},
                                               "step_cli": {"enabled": False}}})

    published = build_appliance(cfg, formats=["raw", "ova"], dist_dir=tmp_path / "dist",
                                build_dir=tmp_path / "build", out=open("/dev/null", "w"))

    assert toy.seen["check_host"]
    # the package format: the toy's RPM was fetched from the release, not a .deb
    assert toy.seen["artifacts"] == [("step-ca", "rpm", f"step-ca-{version}-1.x86_64.rpm")]
    # its update configuration, the restart drop-in beside its update service, its timers for provision
    payload = toy.seen["payload"]
    assert payload[TOY_UPDATES_CONF] == b"security_only = yes\n"
    assert b"restart-if-stale" in payload["etc/systemd/system/toy-updates.service.d/ca-appliance.conf"]
    assert json.loads(payload["etc/ca-appliance/provision.json"])["extra_units"] == ["toy-updates.timer"]
    assert not any(name.startswith("etc/apt/") or name.startswith("etc/dnf/") for name in payload)
    assert json.loads(payload["usr/lib/ca-appliance/build.json"])["base"] == "toy"
    # the outputs: named after it, its release in the manifest, its guest OS in the OVF
    names = sorted(p.name for p in published)
    stem = f"{cfg.image.name}-{cfg.image.version}-toy"
    assert names == [f"{stem}.manifest.json", f"{stem}.ova", f"{stem}.raw"]
    manifest = json.loads((tmp_path / "dist" / f"{stem}.manifest.json").read_text())
    assert (manifest["base"], manifest["release"], manifest["packages"]) == ("toy", "Toy Linux 1", ["toybox 1.0"])
    with tarfile.open(tmp_path / "dist" / f"{stem}.ova") as ova:
        ovf = ET.fromstring(ova.extractfile(f"{cfg.image.name}.ovf").read())
    section = next(e for e in ovf.iter() if e.tag.endswith("OperatingSystemSection"))
    assert [v for k, v in section.attrib.items() if k.endswith("}id")] == ["36"]
    assert [v for k, v in section.attrib.items() if k.endswith("osType")] == ["otherLinux64Guest"]
    assert any(e.text == "Toy Linux (64-bit)" for e in section.iter())


def test_the_base_decides_which_local_package_is_accepted(toy, tmp_path):
    deb = tmp_path / "step-ca.deb"
    deb.write_bytes(b"!<arch>\ndebian-binary   " + bytes(100))
    section = types.SimpleNamespace(path=str(deb), sha256=None)
    with pytest.raises(ConfigError, match=r"it is a \.deb; is not an x86_64 \.rpm .*\(what base toy can install\)"):
        local_artifact("step-ca", "step_ca", section, "toy")
    assert local_artifact("step-ca", "step_ca", section, "debian").kind == "deb"


def test_the_base_names_its_host_tools(toy):
    toy.REQUIRED_TOOLS = {"toy-bootstrap": ("toy-apt-package", "toy-rpm-package")}
    with pytest.raises(UserError, match=r"^missing host tools: toy-bootstrap; install them with "
                                        r"'apt-get install toy-apt-package' or 'dnf install toy-rpm-package'$"):
        preflight(toy, ["qcow2"])


def test_an_unknown_base_fails_loudly_naming_the_registered_ones():
    with pytest.raises(UserError, match=r"^base: 'toy' is not one of: fedora, debian$"):
        get_base("toy")
    with pytest.raises(UserError, match=r"image\.base: 'toy' is not one of: fedora, debian$"):
        load_config(overrides={"image": {"base": "toy"}})
    cfg = load_config(overrides={"image": {"base": "debian"}})
    with pytest.raises(UserError, match=r"base: 'toy' is not one of: fedora, debian"):
        local_artifact("step-ca", "step_ca", types.SimpleNamespace(path="/usr/bin/true", sha256=None), "toy")
    assert cfg.image.base == "debian"


def test_an_unknown_package_format_fails_loudly(tmp_path, monkeypatch):
    monkeypatch.setenv("CA_APPLIANCE_CACHE", str(tmp_path / "cache"))
    bases.register("apkbase", toy_module("apkbase", PACKAGE_KIND="apk"))
    try:
        cfg = load_config(overrides={"image": {"base": "apkbase"}, "artifacts": {"step_cli": {"enabled": False}}})
        with pytest.raises(UserError, match=r"^package format: 'apk' is not one of: deb, rpm$"):
            fetch_artifacts(cfg, progress=False)
    finally:
        bases.unregister("apkbase")


def test_a_module_lacking_part_of_the_protocol_is_refused_by_name():
    partial = toy_module("partial")
    del partial.UPDATE_FILES, partial.OVA_GUEST_OS
    bases.register("partial", partial)
    try:
        with pytest.raises(TypeError, match=r"base 'partial' .*lacks OVA_GUEST_OS, UPDATE_FILES of the Base protocol"):
            get_base("partial")
    finally:
        bases.unregister("partial")


def test_updates_are_off_without_updates_security(toy):
    cfg = load_config(overrides={"image": {"base": "toy"}, "updates": {"security": False}})
    assert TOY_UPDATES_CONF not in generated_files(cfg)
    assert provision_input(cfg)["extra_units"] == []
