"""Build step-ca from Debian's packaged Go sources, for offline builds and CI.

Official step-ca binaries come from GitHub releases; where that is out of reach,
golang-github-smallstep-certificates-dev ships the `commands` package and a tiny
main (image/go/step-ca/main.go) turns it into a working step-ca.
"""
import os
import shutil
import tempfile
from pathlib import Path

from image.cache import cache_dir
from image.errors import UserError
from image.runner import Runner

MAIN_GO = Path(__file__).parent / "go" / "step-ca" / "main.go"
GOPATH = Path("/usr/share/gocode")
COMMANDS_PKG = GOPATH / "src/github.com/smallstep/certificates/commands"
APT_PACKAGES = ("golang-go", "golang-github-smallstep-certificates-dev")


def source_binary_path() -> Path:
    return cache_dir() / "source" / "step-ca"


def build_step_ca_from_source(force: bool = False, log=print) -> Path:
    """Return the path of a step-ca built from Debian's Go sources; build it when missing."""
    target = source_binary_path()
    if target.exists() and not force:
        return target
    if shutil.which("go") is None or not COMMANDS_PKG.is_dir():
        raise UserError(
            "step-ca-from-source: the Go toolchain or step-ca sources are missing; "
            f"install the Debian packages: apt-get install {' '.join(APT_PACKAGES)}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    log_path = target.parent / "build.log"
    log_path.unlink(missing_ok=True)   # the log of this build only
    runner = Runner(log_path)
    runner.step_name = "step-ca-from-source"   # a failure names this step, the log's tail and its path
    env = {"GO111MODULE": "off", "GOPATH": str(GOPATH), "GOFLAGS": "", "GOCACHE": str(target.parent / "gocache")}
    log(f"building step-ca from {COMMANDS_PKG} (about a minute)...")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / "step-ca"
        runner.run(["go", "build", "-o", out, MAIN_GO], env=env)
        os.replace(out, target)  # atomic: a half-built binary never counts as cached
    return target
