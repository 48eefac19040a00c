"""All-or-nothing replacement of directory trees: build beside the target, then rename into place.

A staged tree lives next to its target (same file system, so rename is atomic). swap() moves
each old tree aside and the new one in; any failure or Ctrl-C before it returns puts every old
tree back. The old trees are deleted only once the caller commits.
"""
import os
import secrets
import shutil
import tempfile
from pathlib import Path


class Staging:
    def __init__(self):
        self._staged = []   # (staged dir, final dir)
        self._moved = []    # (staged dir, final dir, old dir or None), in swap order
        self._files = []    # (final file, previous bytes or None)

    def stage_dir(self, final):
        """A new empty directory beside `final`, to fill with what `final` should hold."""
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{final.name}.new-", dir=final.parent))
        self._staged.append((staged, final))
        return staged

    def swap(self):
        """Move every staged tree into place; on any failure, put the old trees back and re-raise."""
        token = secrets.token_hex(4)
        try:
            for staged, final in self._staged:
                old = None
                if final.exists() or final.is_symlink():
                    old = final.with_name(f".{final.name}.old-{token}")
                    os.rename(final, old)
                self._moved.append((staged, final, old))
                os.rename(staged, final)
        except BaseException:
            self.rollback()
            raise

    def replace_file(self, final, data, mode):
        """Atomically write one file (e.g. state.json in a directory shared with others)."""
        final = Path(final)
        previous = final.read_bytes() if final.exists() else None
        self._files.append((final, previous))
        final.parent.mkdir(parents=True, exist_ok=True)
        write_file(final.with_name(f".{final.name}.new"), data, mode)
        os.replace(final.with_name(f".{final.name}.new"), final)

    def rollback(self):
        """Undo swap() and replace_file(), then delete whatever was staged."""
        for final, previous in reversed(self._files):
            if previous is None:
                final.unlink(missing_ok=True)
            else:
                final.write_bytes(previous)
        for staged, final, old in reversed(self._moved):
            if final.exists() and not staged.exists():
                os.rename(final, staged)
            if old is not None:
                os.rename(old, final)
        self._moved = []
        self._files = []
        self.discard()

    def commit(self):
        """Forget the old trees for good."""
        for _staged, _final, old in self._moved:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        self._moved = []
        self._files = []
        self._staged = []

    def discard(self):
        for staged, _final in self._staged:
            shutil.rmtree(staged, ignore_errors=True)
        self._staged = []


def write_file(path, data, mode):
    """Create path with `mode` from the start (never world-readable, not even for a moment)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)  # umask may have taken bits away


def make_dir(path, mode):
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    return path
