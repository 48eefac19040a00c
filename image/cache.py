"""Where downloads, locally built artifacts and bootstrapped base trees are kept between builds.

Base trees (`TreeCache`) are tarballs keyed by a digest of everything that shapes them
(`cache_key`). An entry is a `<key>.tar.zst` and, written after it, a `<key>.json` that holds the
tarball's SHA-256: the tarball is written to a temporary name and renamed, so a build killed
half-way leaves no entry, and a lookup re-hashes the tarball and drops any entry whose digest,
size or metadata is wrong. The cache keeps the `keep` most recently used entries, and an entry
older than `max_age_days` is rebuilt (the mirror's security updates get in at least that often).
The Debian base keeps its initramfs images the same way, in `trees/initramfs/` (image.bases.debian).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from image.files import sha256_file

TREE_FORMAT = 1          # bump when the tarball's layout or options change
DEFAULT_KEEP = 3
DEFAULT_MAX_AGE_DAYS = 7


def cache_dir() -> Path:
    """$CA_APPLIANCE_CACHE, else $XDG_CACHE_HOME/ca-appliance, else ~/.cache/ca-appliance."""
    explicit = os.environ.get("CA_APPLIANCE_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "ca-appliance"


def trees_dir() -> Path:
    return cache_dir() / "trees"


def cache_key(inputs: dict) -> str:
    """Hex SHA-256 of the inputs as canonical JSON: equal inputs, equal key; any change, a new one."""
    text = json.dumps({"format": TREE_FORMAT, **inputs}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def digest_files(root: Path, subdirs: tuple[str, ...] = ("",)) -> dict[str, str]:
    """{relative path: sha256 (and the executable bit)} of every file under root/subdir."""
    out = {}
    for sub in subdirs:
        for path in sorted((Path(root) / sub).rglob("*")):
            if path.is_file():
                mode = "x" if os.stat(path).st_mode & 0o111 else "-"
                out[str(path.relative_to(root))] = f"{sha256_file(path)}{mode}"
    return out


@dataclass
class Entry:
    key: str
    tarball: Path
    meta: Path


class TreeCache:
    def __init__(self, root: Path | None = None, keep: int = DEFAULT_KEEP,
                 max_age_days: float = DEFAULT_MAX_AGE_DAYS):
        self.root = Path(root) if root is not None else trees_dir()
        self.keep = keep
        self.max_age = max_age_days * 86400

    def entry(self, key: str) -> Entry:
        return Entry(key, self.root / f"{key}.tar.zst", self.root / f"{key}.json")

    def _discard(self, entry: Entry) -> None:
        for path in (entry.meta, entry.tarball):   # metadata first: no entry without it
            path.unlink(missing_ok=True)

    def _complete(self, key: str) -> tuple[Entry, dict] | None:
        """The entry and its metadata when both are there, its size is right and it is not stale
        (everything but the digest); else None (a broken, partial or stale entry is deleted)."""
        entry = self.entry(key)
        try:
            meta = json.loads(entry.meta.read_text())
        except (OSError, ValueError):
            if entry.tarball.exists():       # a tarball without metadata was never completed
                self._discard(entry)
            return None
        try:
            ok = (isinstance(meta, dict) and meta.get("key") == key
                  and entry.tarball.stat().st_size == meta.get("size")
                  and time.time() - float(meta.get("created", 0)) <= self.max_age)
        except (OSError, TypeError, ValueError):
            ok = False
        if not ok:
            self._discard(entry)
            return None
        return entry, meta

    def lookup(self, key: str) -> Path | None:
        """The verified tarball for `key`, or None (a broken, partial or stale entry is deleted)."""
        found = self._complete(key)
        if found is None:
            return None
        entry, meta = found
        try:
            ok = sha256_file(entry.tarball) == meta.get("sha256")
        except OSError:
            ok = False
        if not ok:
            self._discard(entry)
            return None
        os.utime(entry.meta)                 # most recently used: kept longest
        return entry.tarball

    def use(self, key: str, consume) -> bool:
        """consume(tarball) the entry for `key` while its digest is checked alongside (another core),
        and whether it was good: False when there is no complete entry (consume is not called) or
        its digest is wrong (the entry is deleted, and the caller must throw away what consume made
        before anything reads it). An exception from consume propagates."""
        found = self._complete(key)
        if found is None:
            return False
        entry, meta = found
        digest: list[str] = []

        def check():
            try:
                digest.append(sha256_file(entry.tarball))
            except OSError:
                pass

        checker = threading.Thread(target=check, daemon=True)
        checker.start()
        try:
            consume(entry.tarball)
        finally:
            checker.join()
        if digest != [meta.get("sha256")]:
            self._discard(entry)
            return False
        os.utime(entry.meta)
        return True

    def store(self, key: str, write_tarball, inputs: dict | None = None) -> Path:
        """write_tarball(path) writes the tarball; it becomes an entry only once complete."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweep_partials()
        entry = self.entry(key)
        self._discard(entry)
        partial = self.root / f".{key}.{os.getpid()}.partial"
        try:
            write_tarball(partial)
            meta = {"key": key, "size": partial.stat().st_size, "sha256": sha256_file(partial),
                    "created": time.time(), "inputs": inputs or {}}
            os.replace(partial, entry.tarball)
            meta_partial = self.root / f".{key}.{os.getpid()}.json.partial"
            meta_partial.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
            os.replace(meta_partial, entry.meta)
        except BaseException:
            partial.unlink(missing_ok=True)
            (self.root / f".{key}.{os.getpid()}.json.partial").unlink(missing_ok=True)
            raise
        self.prune()
        return entry.tarball

    def entries(self) -> list[Entry]:
        """Complete-looking entries, most recently used first."""
        metas = sorted(self.root.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True) \
            if self.root.is_dir() else []
        return [self.entry(p.stem) for p in metas]

    def prune(self) -> None:
        """Keep the `keep` most recently used entries; drop tarballs that have no metadata."""
        entries = self.entries()
        for old in entries[self.keep:]:
            self._discard(old)
        known = {e.tarball for e in entries[:self.keep]}
        for tarball in self.root.glob("*.tar.zst"):
            if tarball not in known:
                tarball.unlink(missing_ok=True)

    def sweep_partials(self) -> None:
        """Partial files of builds that are no longer running (killed, power loss)."""
        for partial in self.root.glob(".*.partial"):
            try:
                pid = int(partial.name.split(".")[2])
            except (IndexError, ValueError):
                pid = -1
            if pid <= 0 or not Path(f"/proc/{pid}").exists():
                partial.unlink(missing_ok=True)

    def clear(self) -> int:
        """Remove every entry (invoke clean --cache); returns the bytes freed."""
        if not self.root.exists():
            return 0
        freed = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        shutil.rmtree(self.root)
        return freed
