"""Build the pinned step-ca and step CLI releases from their Go modules: what users get, built
where GitHub's release downloads are out of reach but the Go module proxy is not (CI, air-gapped
sites with a module mirror).

`image/go/step-ca` and `image/go/step-cli` are two tiny Go modules of the project's own. Each
go.mod requires exactly one release (the one appliance.yaml pins) and its go.sum holds the hash
of every module the binary is built from: `go build -mod=readonly` checks each download against
it, so a build needs no other trust (GOSUMDB is off). Two modules, not one, so that each binary
gets the dependency versions its own release resolves, as upstream's release build does.

Built as upstream's .goreleaser.yml builds them: CGO_ENABLED=0, -trimpath,
-ldflags "-w -X main.Version=<version> -X main.BuildTime=<the release's module time>" (the module
time, not the clock, so the same inputs give the same binary). Binaries are cached under
cache_dir()/go/<binary>/<version>-<key>/, where the key digests go.mod, go.sum and the Go
version; an entry is written to a temporary name and renamed, and checked (`version`) before use.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from image.cache import cache_dir
from image.errors import StepFailed, UserError
from image.runner import Runner, probe, tail

GO_DIR = Path(__file__).parent / "go"
# where a Go newer than the distribution's usually lives (the upstream tarball, Debian's backports)
GO_CANDIDATES = ("/usr/local/go/bin/go", "/usr/lib/go/bin/go")
KEEP_BUILDS = 2          # cached builds kept per binary (the newest ones)
# what Go prints when it cannot reach the module proxy (or a module is not in the cache offline)
UNREACHABLE = re.compile(r"dial tcp|no such host|connection refused|i/o timeout|network is unreachable|"
                         r"TLS handshake timeout|proxyconnect|GOPROXY=off|module lookup disabled|"
                         r"Temporary failure in name resolution")


@dataclass(frozen=True)
class GoTool:
    key: str           # the config section: artifacts.<key>
    binary: str        # the file name in the image (/usr/bin/<binary>)
    module: str        # the Go module of the release
    package: str       # its main package
    module_dir: Path   # the project's pinning module

    @property
    def where(self) -> str:
        return str(self.module_dir.relative_to(GO_DIR.parent.parent))


TOOLS = (
    GoTool("step_ca", "step-ca", "github.com/smallstep/certificates",
           "github.com/smallstep/certificates/cmd/step-ca", GO_DIR / "step-ca"),
    GoTool("step_cli", "step", "github.com/smallstep/cli",
           "github.com/smallstep/cli/cmd/step", GO_DIR / "step-cli"),
)


def _go_mod(tool: GoTool) -> str:
    return (tool.module_dir / "go.mod").read_text()


def pinned_version(tool: GoTool) -> str:
    """The release the pinning module requires: '0.30.2' from `require github.com/smallstep/... v0.30.2`."""
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(tool.module)}\s+v(\S+)", _go_mod(tool), re.M)
    if not match:
        raise StepFailed("step-from-source", f"{tool.where}/go.mod does not require {tool.module}")
    return match.group(1)


def required_go(tool: GoTool) -> tuple[int, ...]:
    match = re.search(r"^go\s+(\d+(?:\.\d+)*)", _go_mod(tool), re.M)
    return tuple(int(x) for x in match.group(1).split(".")) if match else (1, 0)


def check_pin(tool: GoTool, version: str) -> None:
    """The config's version must be the one go.mod pins (one pin for users and CI)."""
    pinned = pinned_version(tool)
    if version != pinned:
        raise UserError(
            f"config error: artifacts.{tool.key}.version: {version!r}: {tool.where}/go.mod pins "
            f"{tool.module} v{pinned}; to build another release run `go get {tool.module}@v{version} && "
            f"go mod tidy` in {tool.where} and commit go.mod and go.sum")


def _go_version(go: str) -> tuple[int, ...] | None:
    proc = probe([go, "env", "GOVERSION"], env={"GOTOOLCHAIN": "local"})
    if proc is None:
        return None
    match = re.match(r"go(\d+(?:\.\d+)*)", proc.stdout.strip())
    return tuple(int(x) for x in match.group(1).split(".")) if match else None


def find_go(minimum: tuple[int, ...]) -> str:
    """The first Go toolchain at least `minimum`: PATH's `go`, then the usual install places.
    An older one first on PATH (Debian bookworm's golang-go is 1.19) is passed over, not used."""
    seen = []
    for candidate in (shutil.which("go"), *GO_CANDIDATES):
        if not candidate or not os.access(candidate, os.X_OK) or candidate in (s for s, _ in seen):
            continue
        version = _go_version(candidate)
        seen.append((candidate, version))
        if version is not None and version >= minimum:
            return candidate
    found = ", ".join(f"{path} (go{'.'.join(map(str, v)) if v else '?'})" for path, v in seen) or "none"
    raise UserError(f"step-from-source: Go {'.'.join(map(str, minimum))} or later is needed to build step "
                    f"and step-ca; found: {found}; install a newer Go (https://go.dev/dl) or put local "
                    f"binaries in artifacts.step_ca.path and artifacts.step_cli.path")


def build_key(tool: GoTool, go_version: tuple[int, ...]) -> str:
    h = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        h.update((tool.module_dir / name).read_bytes() + b"\0")
    h.update(".".join(map(str, go_version)).encode())
    return h.hexdigest()[:12]


def binary_path(tool: GoTool, version: str, key: str) -> Path:
    return cache_dir() / "go" / tool.binary / f"{version}-{key}" / tool.binary


def reports_version(path: Path, version: str) -> bool:
    """`step-ca version` / `step version` print 'Smallstep CA/0.30.2 (linux/amd64)' and the like."""
    proc = probe([path, "version"])
    return proc is not None and f"/{version} " in proc.stdout


def _go_env(gocache: Path) -> dict:
    return {"GOTOOLCHAIN": "local",          # the toolchain found, never one downloaded behind our back
            "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -buildvcs=false",
            "GOSUMDB": "off",                 # go.sum in the repository is the only trust needed
            "GOCACHE": str(gocache), "GOOS": "linux", "GOARCH": "amd64"}


def _fetch_modules(runner: Runner, go: str, tool: GoTool, env: dict) -> None:
    """Download (and verify against go.sum) what the binary is built from; an unreachable proxy is
    the user's to fix (exit 2), anything else a failed step."""
    proc = runner.run([go, "list", "-deps", "-f", "{{if .Module}}{{.Module.Path}}{{end}}", tool.package],
                      env=env, cwd=tool.module_dir, capture=True, check=False)
    if proc.returncode == 0:
        return
    said = tail(runner.log_path, 30)
    if UNREACHABLE.search(said):
        proxy = os.environ.get("GOPROXY") or "the default, proxy.golang.org"
        raise UserError(f"step-from-source: the Go module proxy cannot be reached (GOPROXY={proxy}) to fetch "
                        f"{tool.module}; set GOPROXY to a reachable module mirror, or put local binaries in "
                        f"artifacts.step_ca.path and artifacts.step_cli.path (log: {runner.log_path})")
    raise StepFailed(runner.step_name, "go list exited with status "
                     f"{proc.returncode}\n" + "\n".join("    " + x for x in said.splitlines()[-10:]),
                     runner.log_path)


def _toolchain_and_target(tool: GoTool, version: str) -> tuple[str, Path]:
    """(the Go that builds `tool`, where its binary at `version` is cached for that Go)."""
    go = find_go(required_go(tool))
    return go, binary_path(tool, version, build_key(tool, _go_version(go)))


def build_tool(tool: GoTool, version: str, *, force: bool = False, log=None) -> Path:
    """The cached binary of `tool` at `version` (the pinned one), built when missing."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    check_pin(tool, version)
    go, target = _toolchain_and_target(tool, version)
    if target.exists() and not force:
        if reports_version(target, version):
            log(f"{tool.binary} {version}: cached ({target})")
            return target
        log(f"{tool.binary} {version}: the cached binary does not run or report {version}; building it again")
    target.parent.mkdir(parents=True, exist_ok=True)
    runner = Runner(target.parent / "build.log", out=sys.stderr)
    runner.log_path.unlink(missing_ok=True)   # the log of this build only
    runner.step_name = f"step-from-source ({tool.binary} {version})"
    env = _go_env(cache_dir() / "go" / "gocache")
    start = time.monotonic()
    log(f"{tool.binary} {version}: building from {tool.module} with {go} (a few minutes cold, seconds warm)...")
    _fetch_modules(runner, go, tool, env)
    released = runner.run([go, "list", "-m", "-f", "{{if .Time}}{{.Time.UTC.Format \"2006-01-02T15:04:05Z\"}}{{end}}",
                           tool.module], env=env, cwd=tool.module_dir, capture=True).stdout.decode().strip()
    ldflags = f"-w -X main.Version={version} -X main.BuildTime={released or 'N/A'}"
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / tool.binary
        runner.run([go, "build", "-trimpath", "-ldflags", ldflags, "-o", out, tool.package],
                   env=env, cwd=tool.module_dir)
        if not reports_version(out, version):
            raise StepFailed(runner.step_name, f"the built {tool.binary} does not report version {version}",
                             runner.log_path)
        os.replace(out, target)   # atomic: a half-built binary never counts as cached
    _prune(tool, keep=target.parent)
    log(f"{tool.binary} {version}: built in {time.monotonic() - start:.0f}s ({target})")
    return target


def _prune(tool: GoTool, keep: Path) -> None:
    """Only the newest KEEP_BUILDS builds of a binary stay (each is ~40 MB)."""
    builds = sorted((p for p in keep.parent.iterdir() if p.is_dir() and p != keep),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[KEEP_BUILDS - 1:]:
        shutil.rmtree(old, ignore_errors=True)


def build_step_binaries(cfg, *, force: bool = False, log=None) -> dict[str, Path]:
    """{config key: binary} for step-ca and the step CLI at the versions cfg pins."""
    return {tool.key: build_tool(tool, cfg.artifacts[tool.key].version, force=force, log=log) for tool in TOOLS}


def config_snippet(paths: dict[str, Path]) -> str:
    """The YAML to merge with --config so a build installs these binaries."""
    lines = ["# invoke step-from-source: step-ca and step built from their Go modules", "artifacts:"]
    for key, path in paths.items():
        lines.append(f"  {key}: {{path: {path}}}")
    return "\n".join(lines) + "\n"


def pinned_binaries(*, log=None) -> dict[str, Path]:
    """step-ca and step at the versions appliance.yaml pins: what the tests, bench and CI's image use."""
    from image.config import load_config
    return build_step_binaries(load_config(), log=log or (lambda *_: None))


def cached_pinned_binary(key: str) -> Path | None:
    """The pinned binary of artifacts.<key> when already built and cached (never builds); else None."""
    from image.config import load_config
    tool = next(t for t in TOOLS if t.key == key)
    _, target = _toolchain_and_target(tool, load_config().artifacts[key].version)
    return target if target.exists() else None
