"""The step-ca and step CLI packages a build installs: downloaded from their releases, verified, cached.

For each artifact in the config (step-ca always, step-cli when artifacts.step_cli.enabled) the base
needs one file of its PACKAGE_KIND (a row of PACKAGE_FORMATS: an x86_64 RPM, an amd64 .deb). It comes
either from the release at
`{url}/v{version}/{asset}`, checked against that release's checksums.txt (and the config's sha256
pin, when set), or from a local `path` (a package of the right kind, or an x86-64 ELF step-ca).

Downloads land in cache_dir()/releases/<name>/<version>/ only after they verified, so a cached file
is always a whole one; it is re-checked against the cached checksums.txt before it is reused.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from image.bases import get_base
from image.cache import cache_dir
from image.config import ConfigError
from image.download import download_verified
from image.errors import StepFailed, UserError
from image.files import sha256_file

CHECKSUMS_ASSET = "checksums.txt"
# smallstep's goreleaser/nfpm packages carry package release 1 (packageRelease in .goreleaser.yml).
PACKAGE_RELEASE = "1"

# what to do without the network, per artifact: the error for an unreachable release says it
OFFLINE_HINT = {
    "step_ca": "offline builds can use a local package or binary in artifacts.step_ca.path "
               "(`invoke step-from-source` builds both from their Go modules)",
    "step_cli": "offline builds can use a local package or binary in artifacts.step_cli.path "
                "(`invoke step-from-source` builds both from their Go modules), "
                "or go without the step CLI: artifacts.step_cli.enabled: false",
}

RPM_LEAD_MAGIC = b"\xed\xab\xee\xdb"
AR_MAGIC = b"!<arch>\n"
ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True)
class PackageFormat:
    kind: str           # what detect_kind says of such a file
    describe: str       # for messages: what a base of this kind installs
    asset: str          # smallstep's release file name: {package}, {version}, {release}


# The package formats a base may name (its PACKAGE_KIND); nfpm's conventional names, as of v0.30:
# step-ca_0.30.2-1_amd64.deb, step-ca-0.30.2-1.x86_64.rpm.
PACKAGE_FORMATS = {
    "deb": PackageFormat("deb", "an amd64 .deb", "{package}_{version}-{release}_amd64.deb"),
    "rpm": PackageFormat("rpm", "an x86_64 .rpm", "{package}-{version}-{release}.x86_64.rpm"),
}


def package_format(kind: str) -> PackageFormat:
    """The row of PACKAGE_FORMATS; an unknown kind is an error, never a guess."""
    try:
        return PACKAGE_FORMATS[kind]
    except (KeyError, TypeError):
        raise UserError(f"package format: {kind!r} is not one of: {', '.join(PACKAGE_FORMATS)}") from None


def base_package_format(base: str) -> PackageFormat:
    """The package format base installs (its PACKAGE_KIND)."""
    return package_format(get_base(base).PACKAGE_KIND)


@dataclass(frozen=True)
class Artifact:
    name: str       # 'step-ca' | 'step-cli' (the package name too)
    version: str    # the release version; 'local' for a `path` artifact
    kind: str       # 'rpm' | 'deb' | 'binary'
    path: Path
    sha256: str


def release_asset_name(package: str, version: str, kind: str) -> str:
    """The file name smallstep publishes in a release for a package of `kind` (PACKAGE_FORMATS)."""
    return package_format(kind).asset.format(package=package, version=version, release=PACKAGE_RELEASE)


def release_url(base_url: str, version: str, asset: str) -> str:
    return f"{base_url}/v{version}/{asset}"


def fetch_artifacts(cfg, *, progress: bool = True, out=None) -> list[Artifact]:
    """The packages cfg.image.base needs, verified and cached; local `path` artifacts as they are."""
    out = sys.stderr if out is None else out
    wanted = [("step-ca", "step_ca")]
    if cfg.artifacts.step_cli.enabled:
        wanted.append(("step-cli", "step_cli"))
    fetched = []
    for name, key in wanted:
        section = cfg.artifacts[key]
        if section.path is not None:
            artifact = local_artifact(name, key, section, cfg.image.base)
            if progress:
                print(f"{name}: using {artifact.path} ({artifact.kind})", file=out, flush=True)
        else:
            artifact = fetch_release_artifact(name, key, section, cfg.image.base, progress=progress, out=out)
        fetched.append(artifact)
    return fetched


# --- local artifacts


def detect_kind(path: Path) -> str | None:
    """'rpm', 'deb' or 'binary' (an x86-64 ELF executable) from the file's first bytes; None if neither."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(RPM_LEAD_MAGIC):
        return "rpm"
    # a .deb is an ar archive whose first member is debian-binary
    if head.startswith(AR_MAGIC) and head[8:24].rstrip(b" /") == b"debian-binary":
        return "deb"
    if (head.startswith(ELF_MAGIC) and len(head) >= 20 and head[4] == 2 and head[5] == 1
            and int.from_bytes(head[16:18], "little") in (2, 3)       # ET_EXEC, ET_DYN (PIE)
            and int.from_bytes(head[18:20], "little") == 62):          # EM_X86_64
        return "binary"
    return None


def _describe_allowed(base: str) -> str:
    package = base_package_format(base).describe
    return f"is not {package} or an x86-64 ELF executable (what base {base} can install)"


def local_artifact(name: str, key: str, section, base: str) -> Artifact:
    path_key = f"artifacts.{key}.path"
    path = Path(section.path)
    if not path.is_file():
        raise ConfigError(path_key, section.path, "is not an existing file")
    try:
        kind = detect_kind(path)
    except OSError as e:
        raise ConfigError(path_key, section.path, f"cannot be read ({e.strerror})") from None
    if kind not in (base_package_format(base).kind, "binary"):
        found = f"it is {'a .' + kind if kind else 'neither a package nor an x86-64 executable'}; "
        raise ConfigError(path_key, section.path, found + _describe_allowed(base))
    digest = sha256_file(path)
    if section.sha256 is not None and digest != section.sha256:
        raise ConfigError(path_key, section.path,
                          f"has sha256 {digest}, but artifacts.{key}.sha256 pins {section.sha256}")
    return Artifact(name, "local", kind, path, digest)


# --- release downloads


def release_dir(name: str, version: str) -> Path:
    return cache_dir() / "releases" / name / version


def fetch_release_artifact(name: str, key: str, section, base: str, *, progress: bool, out) -> Artifact:
    kind = base_package_format(base).kind
    asset = release_asset_name(name, section.version, kind)
    where = release_dir(name, section.version)
    where.mkdir(parents=True, exist_ok=True)
    step = f"fetch {name}"

    checksums = release_checksums(name, key, section, where, progress=progress, out=out)
    expected = checksums.get(asset)
    if expected is None:
        similar = sorted(n for n in checksums if n.startswith(name) and n.endswith("." + kind))
        hint = f"its {kind} packages: {', '.join(similar)}" if similar else f"it lists no {name} .{kind}"
        raise ConfigError(f"artifacts.{key}.version", section.version,
                          f"has no {asset} in its {CHECKSUMS_ASSET} ({hint})")

    target = where / asset
    if target.exists():
        actual = sha256_file(target)
        if actual == expected:
            if progress:
                print(f"{name} {section.version}: cached, verified ({target})", file=out, flush=True)
        else:
            if progress:
                print(f"{name} {section.version}: cached {asset} is damaged, downloading it again",
                      file=out, flush=True)
            target.unlink()
    if not target.exists():
        actual = download(release_url(section.url, section.version, asset), target, step=step,
                          key=key, version=section.version,
                          expected_sha256=expected, progress=progress, out=out)

    if section.sha256 is not None and actual != section.sha256:
        target.unlink(missing_ok=True)
        raise StepFailed(step, f"{asset} does not match artifacts.{key}.sha256: expected sha256 "
                               f"{section.sha256}, got {actual} (the file was deleted)")
    return Artifact(name, section.version, kind, target, actual)


def release_checksums(name: str, key: str, section, where: Path, *, progress: bool, out) -> dict[str, str]:
    """{asset: sha256} from the release's checksums.txt, downloaded once per version."""
    path = where / CHECKSUMS_ASSET
    if not path.exists():
        download(release_url(section.url, section.version, CHECKSUMS_ASSET), path, step=f"fetch {name}",
                 key=key, version=section.version,
                 expected_sha256=None, progress=False, out=out)
    return parse_checksums(path.read_text(errors="replace"))


def parse_checksums(text: str) -> dict[str, str]:
    """sha256sum-style lines: '<64 hex>  <name>' (a '*' before the name marks binary mode)."""
    sums = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and len(parts[0]) == 64 and all(c in "0123456789abcdefABCDEF" for c in parts[0]):
            sums[parts[1].lstrip("*").strip()] = parts[0].lower()
    return sums


def download(url: str, target: Path, *, step: str, key: str, version: str,
             expected_sha256: str | None, progress: bool, out) -> str:
    """A release asset to target (image.download: whole and verified, or nothing); returns its sha256."""
    version_key = f"artifacts.{key}.version"

    def missing(http_404: bool) -> UserError:
        return UserError(f"config error: {version_key}: {version!r}: {url} does not exist"
                         f"{' (HTTP 404)' if http_404 else ''}; check {version_key} (and the release url next to it)")

    return download_verified(url, target, step=step, expected_sha256=expected_sha256,
                             digest_source=f"the release's {CHECKSUMS_ASSET}", missing=missing,
                             unreachable_hint=OFFLINE_HINT[key], progress=progress, out=out)
