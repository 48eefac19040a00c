"""Which step-ca an image carries, and the test-image verdict for one older than 0.29.0
(GHSA-h8cp-697h-8c8p): the build warns, the manifest and build.json record it."""
import json
import os
import tarfile
from pathlib import Path

import pytest

from image.artifacts import Artifact
from image.bases import BaseResult
from image.build import manifest
from image.config import load_config
from image.payload import write_payload_tarball
from image.stepca_version import assess_step_ca, assess_version, parse_version, step_ca_version


def fake_step_ca(tmp_path: Path, says: str) -> Path:
    """A local step-ca 'binary' that reports a version the way urfave/cli's --version does."""
    path = tmp_path / "step-ca"
    path.write_text(f"#!/bin/sh\n[ \"$1\" = --version ] && echo '{says}' && exit 0\nexit 1\n")
    os.chmod(path, 0o755)
    return path


def test_versions_are_parsed_from_what_step_ca_says():
    assert parse_version("step-ca version 0.19.0-debian") == "0.19.0"
    assert parse_version("Smallstep CA/0.30.2 (linux/amd64)") == "0.30.2"
    assert parse_version("no version here") is None


@pytest.mark.parametrize("version, test_only", [("0.19.0", True), ("0.28.9", True), ("0.29.0", False),
                                                ("0.30.2", False), ("1.0.0", False)])
def test_older_than_0_29_0_is_a_test_image(version, test_only):
    verdict = assess_version(version)
    assert verdict.test_only is test_only
    assert (verdict.reason is not None) is test_only
    if test_only:
        assert "GHSA-h8cp-697h-8c8p" in verdict.reason and version in verdict.reason


def test_a_local_binary_is_asked_its_version_and_a_release_uses_its_own(tmp_path):
    binary = Artifact("step-ca", "local", "binary", fake_step_ca(tmp_path, "step-ca version 0.19.0-debian"), "0" * 64)
    assert step_ca_version(binary) == "0.19.0"
    release = Artifact("step-ca", "0.30.2", "rpm", tmp_path / "step-ca.rpm", "0" * 64)
    assert step_ca_version(release) == "0.30.2"


@pytest.mark.parametrize("says", ["step-ca version unknown", "", "Smallstep CA/0.30 (linux/amd64)"])
def test_a_step_ca_whose_version_cannot_be_read_is_a_test_image(tmp_path, says):
    """Fail closed: an unknown step-ca is never called production."""
    binary = Artifact("step-ca", "local", "binary", fake_step_ca(tmp_path, says), "0" * 64)
    verdict = assess_step_ca([binary])
    assert verdict.version is None and verdict.test_only is True
    assert "could not be read" in verdict.reason and "GHSA-h8cp-697h-8c8p" in verdict.reason
    assert assess_step_ca([]).test_only is True
    assert assess_version(None).test_only is True and assess_version("0.30").test_only is True


def test_manifest_and_build_json_record_a_test_image(tmp_path):
    cfg = load_config(overrides={"image": {"base": "debian"}})
    binary = Artifact("step-ca", "local", "binary", fake_step_ca(tmp_path, "step-ca version 0.19.0-debian"), "0" * 64)
    payload = write_payload_tarball(cfg, tmp_path / "payload.tar.gz", [binary])
    with tarfile.open(payload) as tar:
        build = json.loads(tar.extractfile("usr/lib/ca-appliance/build.json").read())
    assert build["step_ca_version"] == "0.19.0" and build["test_only"] is True
    assert "GHSA-h8cp-697h-8c8p" in build["test_only_reason"]
    result = BaseResult(raw=tmp_path / "disk.raw", release="Debian 12", packages=[])
    record = manifest(cfg, result, [binary], payload, {}, 1.0)
    assert (record["step_ca_version"], record["test_only"]) == ("0.19.0", True)
    assert record["test_only_reason"] == build["test_only_reason"]
    current = Artifact("step-ca", "0.30.2", "deb", tmp_path / "x.deb", "0" * 64)
    assert manifest(cfg, result, [current], payload, {}, 1.0)["test_only"] is False
