"""The Debian appliance image the tests share: built once, then reused while nothing it is made of changes.

`ensure_debian_test_image()` builds the qcow2 CI builds (Debian base, step-ca and step built from
their Go modules at the versions appliance.yaml pins) into build/test-image/<key>/ and returns its
path. The key digests the config,
the payload (overlay and generated files) and the build code, so an edit to any of them rebuilds,
and anything else reuses the image. A file lock keeps two test processes from building it twice.
"""
from __future__ import annotations

import fcntl
import hashlib
import shutil
import tempfile
from pathlib import Path

from image.build import build_appliance, output_stem
from image.config import load_config
from image.files import sha256_file
from image.payload import write_payload_tarball
from image.stepbuild import pinned_binaries

PROJECT_ROOT = Path(__file__).resolve().parents[1]

TEST_IMAGE_DIR = PROJECT_ROOT / "build" / "test-image"
# the code that decides what goes into the image (besides the payload)
BUILD_CODE = ("image/build.py", "image/disk.py", "image/bases/__init__.py", "image/bases/debian.py",
              "image/bases/debian_files", "image/stepca_version.py")


def debian_test_config():
    return load_config(overrides={
        "image": {"base": "debian", "formats": ["qcow2"]},
        "artifacts": {key: {"path": str(path)} for key, path in pinned_binaries().items()},
    })


def _digest_tree(h, path: Path) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(PROJECT_ROOT)).encode() + b"\0")
        h.update(f.read_bytes() + bytes([f.stat().st_mode & 0o111 != 0]))


def image_key(cfg) -> str:
    h = hashlib.sha256(cfg.digest().encode())
    with tempfile.TemporaryDirectory() as tmp:
        h.update(sha256_file(write_payload_tarball(cfg, Path(tmp) / "payload.tar.gz")).encode())
    h.update(sha256_file(Path(cfg.artifacts.step_ca.path)).encode())
    h.update(sha256_file(Path(cfg.artifacts.step_cli.path)).encode())
    for rel in BUILD_CODE:
        _digest_tree(h, PROJECT_ROOT / rel)
    return h.hexdigest()[:16]


def debian_test_image_dir() -> Path:
    """The directory holding the current test image, its SHA256SUMS and manifest (built or not)."""
    return TEST_IMAGE_DIR / image_key(debian_test_config())


def latest_build_log(image: Path) -> Path | None:
    """The log of the build that wrote the test image (the newest one for its stem), if kept."""
    stem = image.name.removesuffix(".qcow2")
    logs = sorted((TEST_IMAGE_DIR / "work" / "logs").glob(f"build-{stem}-*.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1] if logs else None


def ensure_debian_test_image() -> Path:
    """The Debian test qcow2, built on first use (a few minutes) and reused afterwards."""
    cfg = debian_test_config()
    dist = TEST_IMAGE_DIR / image_key(cfg)
    image = dist / f"{output_stem(cfg)}.qcow2"
    TEST_IMAGE_DIR.mkdir(parents=True, exist_ok=True)
    with open(TEST_IMAGE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # a concurrent caller waits for this build, then reuses it
        if image.exists():
            return image
        for old in TEST_IMAGE_DIR.iterdir():   # images of older code: only the newest is kept
            if old.is_dir() and old.name != "work":
                shutil.rmtree(old)
        partial = TEST_IMAGE_DIR / f".{dist.name}.building"
        shutil.rmtree(partial, ignore_errors=True)
        build_appliance(cfg, dist_dir=partial, build_dir=TEST_IMAGE_DIR / "work")
        partial.rename(dist)   # the keyed directory exists only once it holds a whole build
    return image
