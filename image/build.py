"""`invoke build`: one config in, dist/<name>-<version>-<base>.<ext> + SHA256SUMS + manifest out.

Stages, each reading only what the previous one wrote:
  preflight (host tools, root) -> artifacts -> payload -> base.build_raw -> formats -> publish.
Everything is made in build/work-<stem>/ and dist/.<stem>.partial/; only a complete build is
moved into dist/. On failure or Ctrl-C the work and partial directories are removed (their
loop devices and mounts released first) and the log path is printed; the log stays.
"""
from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from image.bases import BaseResult, get_base
from image.config import PROJECT_ROOT, Config
from image.disk import remove_tree
from image.errors import ApplianceError, UserError
from image.files import sha256_file
from image.formats import converter, output_format
from image.ova import write_ova, write_vmdk
from image.payload import write_payload_tarball
from image.runner import Runner, probe, require_root, require_tools
from image.stepca_version import assess_configured, assess_step_ca

BUILD_DIR = PROJECT_ROOT / "build"
DIST_DIR = PROJECT_ROOT / "dist"
SUMS_FILE = "SHA256SUMS"
CONVERSION_TOOLS = {"qemu-img": ("qemu-utils", "qemu-img")}


def output_stem(cfg: Config, test_only: bool | None = None) -> str:
    """The dist/ file stem; a test image's ends in `-test` (test_only None: judged from the step-ca
    the config names, without fetching it; an unreadable version counts as test)."""
    if test_only is None:
        test_only = assess_configured(cfg).test_only
    return f"{cfg.image.name}-{cfg.image.version}-{cfg.image.base}" + ("-test" if test_only else "")


def check_formats(formats: list[str] | tuple[str, ...]) -> list[str]:
    """The formats asked for, each a row of image/formats.py's table (UserError naming them all)."""
    for fmt in formats:
        output_format(fmt)
    return list(dict.fromkeys(formats))


def preflight(base, formats: list[str]) -> None:
    """Everything the host lacks, reported before any work is done."""
    require_tools({**base.REQUIRED_TOOLS, **CONVERSION_TOOLS})
    check_host = getattr(base, "check_host", None)
    if check_host is not None:
        check_host()
    if base.NEEDS_ROOT:
        require_root(f"invoke build (base {base.__name__.rsplit('.', 1)[-1]})")


def fetch_artifacts(cfg: Config) -> list:
    from image.artifacts import fetch_artifacts as fetch  # lazy: only builds need the network code
    return fetch(cfg)


def check_signing(formats: list[str], sign_key, sign_cert) -> None:
    """--sign/--cert are checked before the build, not after minutes of it."""
    if sign_key is None and sign_cert is None:
        return
    if "ova" not in formats:
        raise UserError(f"--sign: only an OVA is signed, and the formats are {', '.join(formats)} (add --format ova)")
    for option, path in (("--sign", sign_key), ("--cert", sign_cert)):
        if path is None:
            raise UserError("--sign and --cert: give both (the RSA key and its certificate) or neither")
        if not Path(path).is_file():
            raise UserError(f"{option}: {str(path)!r} does not exist")


def write_format(fmt: str, cfg: Config, raw: Path, out: Path, runner: Runner, signing: dict,
                 test_reason: str | None = None) -> None:
    """Write the raw disk as `fmt` to out: the converter its row of image/formats.py names."""
    converter(fmt)(cfg, raw, out, runner, signing, test_reason)


# --- the converters image/formats.py names: converter(cfg, raw, out, runner, signing, test_reason)


def write_qcow2(cfg, raw: Path, out: Path, runner: Runner, signing=None, test_reason=None) -> None:
    # zstd: as small as zlib and ten times faster to write; read by every QEMU since 5.1 (2020).
    # -W: clusters are written out of order, so both cores compress.
    runner.run(["qemu-img", "convert", "-c", "-W", "-o", "compression_type=zstd",
                "-f", "raw", "-O", "qcow2", raw, out])
    runner.run(["qemu-img", "check", "-f", "qcow2", out])


def write_vmdk_format(cfg, raw: Path, out: Path, runner: Runner, signing=None, test_reason=None) -> None:
    write_vmdk(raw, out, runner)


def write_vhdx(cfg, raw: Path, out: Path, runner: Runner, signing=None, test_reason=None) -> None:
    """Hyper-V's disk: a dynamic VHDX (what New-VHD -Dynamic makes) with 1 MiB blocks, the block size
    Microsoft recommends for Linux guests (ext4 spreads its writes; bigger blocks grow the file)."""
    runner.run(["qemu-img", "convert", "-f", "raw", "-O", "vhdx", "-o", "subformat=dynamic,block_size=1M",
                raw, out])
    runner.run(["qemu-img", "check", "-f", "vhdx", out])


def write_ova_format(cfg, raw: Path, out: Path, runner: Runner, signing=None, test_reason=None) -> None:
    write_ova(cfg, raw, out, runner, **(signing or {}), test_reason=test_reason)


def move_raw_format(cfg, raw: Path, out: Path, runner: Runner, signing=None, test_reason=None) -> None:
    """The raw disk itself, moved (so written last: formats.OutputFormat.moves_raw)."""
    move_raw(raw, out, runner)


def move_raw(raw: Path, out: Path, runner: Runner) -> None:
    try:
        os.replace(raw, out)
    except OSError:   # another file system: copy, keeping the holes
        runner.run(["cp", "--sparse=always", raw, out])


def artifact_record(art) -> dict:
    record = {"name": art.name, "version": art.version, "kind": art.kind, "sha256": art.sha256,
              "file": Path(art.path).name}
    if art.kind == "binary":   # a local build says what it is only when asked
        proc = probe([art.path, "--version"], timeout=20)
        if proc is not None and proc.returncode == 0 and proc.stdout.strip():
            record["reports"] = proc.stdout.strip().splitlines()[0]
    return record


def manifest(cfg: Config, result: BaseResult, artifacts: list, payload: Path,
             outputs: dict[str, str], seconds: float, steps: dict | None = None,
             formats: dict[str, str] | None = None) -> dict:
    by_name = {a.name: artifact_record(a) for a in artifacts}
    return {
        "name": cfg.image.name,
        "version": cfg.image.version,
        "base": cfg.image.base,
        "release": result.release,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 1),
        "build_steps": dict(steps or {}),   # each named step's seconds (the log prints the same)
        "config_digest": cfg.digest(),
        "payload_sha256": sha256_file(payload),
        "step_ca": by_name.get("step-ca"),
        # step-ca older than 0.29.0 (GHSA-h8cp-697h-8c8p): a test image, not for production
        **_test_only_record(artifacts),
        "step_cli": by_name.get("step-cli"),
        "outputs": outputs,
        # each output's format and what its row of image/formats.py says it is
        "output_formats": {name: {"format": fmt, "is": output_format(fmt).manifest}
                           for name, fmt in (formats or {}).items()},
        "packages": result.packages,
    }


def _test_only_record(artifacts: list) -> dict:
    assessment = assess_step_ca(artifacts)
    return {"step_ca_version": assessment.version, "test_only": assessment.test_only,
            "test_only_reason": assessment.reason}


def update_sums(dist_dir: Path, digests: dict[str, str]) -> None:
    """SHA256SUMS lists every output in dist/: this build's lines replace older ones of the same name,
    and lines of files no longer there go."""
    sums = dist_dir / SUMS_FILE
    lines = {}
    if sums.exists():
        for line in sums.read_text().splitlines():
            digest, _, name = line.partition("  ")
            if name and (dist_dir / name).exists():
                lines[name] = digest
    lines.update(digests)
    tmp = sums.with_name(SUMS_FILE + ".partial")
    tmp.write_text("".join(f"{lines[n]}  {n}\n" for n in sorted(lines)))
    os.replace(tmp, sums)


def build_appliance(cfg: Config, formats=None, verbose: bool = False, *, sign_key=None, sign_cert=None,
                    dist_dir: Path = DIST_DIR, build_dir: Path = BUILD_DIR, out=sys.stderr,
                    use_cache: bool = True) -> list[Path]:
    """Build the appliance into dist_dir; returns the written outputs (manifest last).
    sign_key/sign_cert: sign the OVA (PEM RSA key and its certificate).
    use_cache=False: bootstrap the base afresh instead of reusing a cached base tree (the fresh tree
    then replaces the cache entry)."""
    formats = check_formats(formats or cfg.image.formats)
    check_signing(formats, sign_key, sign_cert)
    signing = {"sign_key": sign_key, "sign_cert": sign_cert}
    base = get_base(cfg.image.base)
    preflight(base, formats)

    stem = output_stem(cfg)
    dist_dir, build_dir = Path(dist_dir), Path(build_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    runner = Runner(build_dir / "logs" / f"build-{stem}-{stamp}.log", verbose=verbose, out=out)
    workdir = build_dir / f"work-{stem}"
    staging = dist_dir / f".{stem}.partial"
    start = time.monotonic()
    runner.say(f"building {stem} ({', '.join(formats)}); log: {runner.log_path}")
    try:
        for leftover in (workdir, staging):
            remove_tree(leftover, runner)
        workdir.mkdir(parents=True)
        staging.mkdir(parents=True)
        with runner.step("artifacts: step-ca" + (" and step" if cfg.artifacts.step_cli.enabled else "")):
            artifacts = fetch_artifacts(cfg)
        assessment = assess_step_ca(artifacts)
        if assessment.test_only:
            runner.say(f"warning: TEST IMAGE: {assessment.reason}")
        # the names say what the step-ca found in the artifacts makes it: a test image ends in -test
        dist_stem = output_stem(cfg, assessment.test_only)
        with runner.step("payload: overlay and generated files"):
            payload = write_payload_tarball(cfg, workdir / "payload.tar.gz", artifacts)
        result = base.build_raw(cfg, workdir=workdir / "base", runner=runner, artifacts=artifacts,
                                payload=payload, use_cache=use_cache)
        written: dict[str, Path] = {}
        kinds: dict[str, str] = {}
        for fmt in sorted(formats, key=lambda f: output_format(f).moves_raw):   # a move comes last
            target = staging / f"{dist_stem}.{output_format(fmt).extension}"
            with runner.step(f"{fmt}: {target.name}"):
                write_format(fmt, cfg, result.raw, target, runner, signing, assessment.reason)
            written[target.name] = target
            kinds[target.name] = fmt
        with runner.step("checksums and manifest"):
            digests = {name: sha256_file(path) for name, path in written.items()}
            manifest_path = staging / f"{dist_stem}.manifest.json"
            manifest_path.write_text(json.dumps(
                manifest(cfg, result, artifacts, payload, digests, time.monotonic() - start, runner.durations,
                         kinds),
                indent=2) + "\n")
            digests[manifest_path.name] = sha256_file(manifest_path)
            written[manifest_path.name] = manifest_path
            published = []
            for name, path in written.items():
                os.chmod(path, 0o644)
                os.replace(path, dist_dir / name)
                published.append(dist_dir / name)
            update_sums(dist_dir, digests)
    except BaseException as e:
        _clean_after_failure(runner, workdir, staging)
        what = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        if isinstance(e, ApplianceError):
            runner.say(f"build {what}; work files removed; log: {runner.log_path}")
        else:   # a bug or Ctrl-C: the traceback or "interrupted" follows, the log stays
            runner.say(f"build {what} ({type(e).__name__}); work files removed; log: {runner.log_path}")
        raise
    remove_tree(workdir, runner)
    staging.rmdir()
    runner.say(f"built in {time.monotonic() - start:.0f}s:")
    for path in published:
        runner.say(f"    {path}")
    return published


def _clean_after_failure(runner: Runner, workdir: Path, staging: Path) -> None:
    """Release loop devices and mounts, then delete the partial work; never mask the original error."""
    for directory in (workdir, staging):
        try:
            remove_tree(directory, runner)
        except (ApplianceError, OSError) as e:
            runner.say(f"    cleanup: {e}")


def clean_outputs(build_dir: Path = BUILD_DIR, dist_dir: Path = DIST_DIR) -> None:
    """Remove build/ and dist/; the download cache (image.cache.cache_dir()) stays."""
    # the log of a clean cannot live in build/, which it deletes
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "ca-appliance-clean.log"
    runner = Runner(log)
    for directory in (Path(build_dir), Path(dist_dir)):
        if directory.exists():
            remove_tree(directory, runner)
            runner.say(f"removed {directory}")



def clean_cache() -> None:
    """Remove the cached base trees (downloads and the step-ca built from source stay)."""
    from image.cache import TreeCache
    cache = TreeCache()
    freed = cache.clear()
    print(f"removed {cache.root} ({freed / 1e6:.0f} MB)" if freed else f"no cached base trees in {cache.root}")
