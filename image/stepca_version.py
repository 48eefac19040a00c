"""Which step-ca an image carries, and whether that makes it a test image.

step-ca before 0.29.0 has GHSA-h8cp-697h-8c8p (ACME and SCEP authorization bypass): an image with
one is for tests only. So is an image whose step-ca version nobody could read: the marking fails
closed, an unknown step-ca is never called production. The build warns, the dist file names carry
`-test`, the OVA's product section says it, the manifest records it, and build.json tells the
guest (status, the console and SSH banners, the client page show it).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from image.runner import probe

FIXED_IN = (0, 29, 0)
ADVISORY = "GHSA-h8cp-697h-8c8p (ACME/SCEP authorization bypass, fixed in step-ca 0.29.0)"
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class StepCaAssessment:
    version: str | None           # "0.30.2"; None when the build could not tell
    test_only: bool
    reason: str | None

    def as_build_info(self) -> dict:
        return {"step_ca_version": self.version, "test_only": self.test_only, "test_only_reason": self.reason}


def parse_version(text: str) -> str | None:
    """The first x.y.z in a version string: "Smallstep CA/0.19.0-debian (linux/amd64)" -> "0.19.0"."""
    m = _VERSION.search(text or "")
    return ".".join(m.groups()) if m else None


def _binary_reports(path: Path) -> str:
    """What a step-ca binary says about itself (`step-ca version`, else `--version`)."""
    for args in (["version"], ["--version"]):
        proc = probe([path, *args], timeout=20)
        if proc is None:
            return ""
        if proc.returncode == 0 and parse_version(proc.stdout + proc.stderr):
            return proc.stdout + proc.stderr
    return ""


def _package_version(path: Path, kind: str) -> str:
    cmd = {"deb": ["dpkg-deb", "--field", str(path), "Version"],
           "rpm": ["rpm", "-qp", "--queryformat", "%{VERSION}", str(path)]}.get(kind)
    if cmd is None:
        return ""
    proc = probe(cmd, timeout=20)
    return proc.stdout if proc is not None and proc.returncode == 0 else ""


def step_ca_version(artifact) -> str | None:
    """A release artifact's version is its config version; a local file says it (binary) or its
    package metadata does."""
    if artifact.version != "local":
        return parse_version(artifact.version)
    if artifact.kind == "binary":
        return parse_version(_binary_reports(Path(artifact.path)))
    return parse_version(_package_version(Path(artifact.path), artifact.kind))


UNKNOWN_REASON = ("the step-ca version could not be read, so it may lack the fix for GHSA-h8cp-697h-8c8p "
                  "(ACME/SCEP authorization bypass, fixed in step-ca 0.29.0); a test image, not for production")


def assess_version(version: str | None) -> StepCaAssessment:
    """Test-only unless `version` is known and at least 0.29.0 (unknown counts as test: fail closed)."""
    if version is None or not _VERSION.fullmatch(version):
        return StepCaAssessment(None, True, UNKNOWN_REASON)
    if tuple(int(x) for x in version.split(".")) < FIXED_IN:
        return StepCaAssessment(version, True, f"step-ca {version} is older than 0.29.0: {ADVISORY}; "
                                               "a test image, not for production")
    return StepCaAssessment(version, False, None)


def assess_step_ca(artifacts: list) -> StepCaAssessment:
    """The assessment of the build's step-ca artifact (none, or one that cannot say its version:
    a test image)."""
    for art in artifacts:
        if art.name == "step-ca":
            return assess_version(step_ca_version(art))
    return assess_version(None)


def assess_configured(cfg) -> StepCaAssessment:
    """What the build of `cfg` will find, without fetching: the release version it pins, or what
    its local `path` (package or binary) says about itself."""
    section = cfg.artifacts.step_ca
    if not getattr(section, "path", None):
        return assess_version(parse_version(section.version))
    from image.artifacts import detect_kind  # the same test the build's fetch applies
    path = Path(section.path)
    try:
        kind = detect_kind(path)
    except OSError:
        return assess_version(None)
    reports = _binary_reports(path) if kind == "binary" else _package_version(path, kind)
    return assess_version(parse_version(reports))
