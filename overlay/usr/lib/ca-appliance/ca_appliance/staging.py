"""All-or-nothing replacement of directory trees: build beside the target, then rename into place.

A staged tree lives next to its target (same file system, so rename is atomic). swap() moves
each old tree aside and the new one in; any failure or Ctrl-C before it returns puts every old
tree back. The old trees are deleted only once the caller commits.

Power cuts: every staged file and directory is fsynced before the renames, and each rename's
directory after it. With a journal path, swap() first records (fsynced) what it is about to
move; a crash before commit() leaves that journal, and recover() puts the previous trees and
files back on the next run. commit() deletes the journal: that unlink is the commit point.
"""
import base64
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path

KILL_AT_VARIABLE = "CA_APPLIANCE_TEST_KILL_AT"
STOP_AT_VARIABLE = "CA_APPLIANCE_TEST_STOP_AT"


def checkpoint(name):
    """Test hooks: SIGKILL this process at the named point when the environment asks for it, so the
    tests can cut setup (a real signal, as a power cut would) at every step and check the rerun; or
    SIGSTOP it there, so they can run another command while this one is mid-change (lock.py)."""
    if os.environ.get(KILL_AT_VARIABLE) == name:
        os.kill(os.getpid(), 9)
    if os.environ.get(STOP_AT_VARIABLE) == name:
        os.kill(os.getpid(), 19)


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root):
    """fsync every file and directory under root (symlinks are not followed)."""
    for directory, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(directory)


class Staging:
    def __init__(self, journal=None):
        self._staged = []   # (staged dir, final dir)
        self._moved = []    # (staged dir, final dir, old dir or None), in swap order
        self._files = []    # (final file, previous bytes or None)
        self._journal = Path(journal) if journal else None
        self._made_parents = []   # deepest first

    def stage_dir(self, final):
        """A new empty directory beside `final`, to fill with what `final` should hold."""
        final = Path(final)
        # directories made for it go again when nothing is committed (a refused restore writes nothing)
        self._made_parents.extend(p for p in [final.parent, *final.parent.parents] if not p.exists())
        final.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{final.name}.new-", dir=final.parent))
        self._staged.append((staged, final))
        return staged

    def _write_journal(self, planned):
        if self._journal is None:
            return
        record = {"trees": [[str(s), str(f), str(o) if o else None] for s, f, o in planned],
                  "files": [[str(path), base64.b64encode(previous).decode("ascii") if previous is not None else None]
                            for path, previous in self._files]}
        write_file(self._journal, json.dumps(record) + "\n", 0o600, durable=True)

    def swap(self):
        """Move every staged tree into place; on any failure, put the old trees back and re-raise."""
        token = secrets.token_hex(4)
        planned = []
        for staged, final in self._staged:
            old = final.with_name(f".{final.name}.old-{token}") if (final.exists() or final.is_symlink()) else None
            planned.append((staged, final, old))
        try:
            for staged, _final, _old in planned:
                fsync_tree(staged)
            self._planned = planned
            self._write_journal(planned)
            for staged, final, old in planned:
                if old is not None:
                    os.rename(final, old)
                self._moved.append((staged, final, old))
                checkpoint(f"swap {final.name} (old moved aside)")
                os.rename(staged, final)
                fsync_dir(final.parent)
                checkpoint(f"swap {final.name} (new in place)")
        except BaseException:
            self.rollback()
            raise

    def replace_file(self, final, data, mode):
        """Atomically and durably write one file (e.g. state.json in a directory shared with others)."""
        final = Path(final)
        previous = final.read_bytes() if final.exists() else None
        self._files.append((final, previous))
        if self._moved:
            self._write_journal(self._planned)
        final.parent.mkdir(parents=True, exist_ok=True)
        write_file(final.with_name(f".{final.name}.new"), data, mode)
        os.replace(final.with_name(f".{final.name}.new"), final)
        fsync_dir(final.parent)

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
        if self._journal is not None:
            self._journal.unlink(missing_ok=True)

    def commit(self):
        """The commit point: the journal goes (durably); then the old trees are deleted for good."""
        if self._journal is not None and self._journal.exists():
            self._journal.unlink()
            fsync_dir(self._journal.parent)
        checkpoint("committed, old trees not yet deleted")
        for _staged, _final, old in self._moved:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        self._moved = []
        self._files = []
        self._staged = []
        self._made_parents = []

    def discard(self):
        for staged, _final in self._staged:
            shutil.rmtree(staged, ignore_errors=True)
        self._staged = []
        for directory in sorted(set(self._made_parents), key=lambda p: len(p.parts), reverse=True):
            try:
                directory.rmdir()   # only when empty: never what someone else put there meanwhile
            except OSError:
                pass
        self._made_parents = []


def recover(journal):
    """Undo a swap that a crash interrupted before its commit; True when there was one to undo."""
    journal = Path(journal)
    if not journal.exists():
        return False
    try:
        record = json.loads(journal.read_text())
    except ValueError:
        record = {"trees": [], "files": []}  # torn before its fsync: the swap had not started
    for path, previous in reversed(record.get("files", [])):
        if previous is None:
            Path(path).unlink(missing_ok=True)
        else:
            write_file(path, base64.b64decode(previous), 0o644, durable=True)
    for staged, final, old in reversed(record.get("trees", [])):
        final, staged = Path(final), Path(staged)
        if old is not None and Path(old).exists():
            if final.exists():
                shutil.rmtree(final)   # the new tree: its old one is still aside
            os.rename(old, final)
        elif old is None and not staged.exists() and final.exists():
            shutil.rmtree(final)       # nothing was there before: the new tree goes
        shutil.rmtree(staged, ignore_errors=True)
        fsync_dir(final.parent)
    journal.unlink()
    fsync_dir(journal.parent)
    return True


def remove_leftovers(final, set_aside=False):
    """Staged trees a crash left beside `final` (.NAME.new-*): never part of anything committed. With
    set_aside, also the trees a swap moved aside (.NAME.old-*): for a swap without a journal (the
    client page, made again from elsewhere), or once recover() has run, when no journal is left to
    name them (a cut between a swap's commit and their deletion). The names removed, for the caller
    to report."""
    final = Path(final)
    removed = []
    if final.parent.is_dir():
        for pattern in (f".{final.name}.new-*", *([f".{final.name}.old-*"] if set_aside else [])):
            for leftover in sorted(final.parent.glob(pattern)):
                shutil.rmtree(leftover, ignore_errors=True)
                removed.append(leftover.name)
    return removed


def write_file(path, data, mode, durable=True):
    """Write path whole or not at all, with `mode` from the start (never world-readable, not even for a
    moment), fsynced: the bytes go to a new file beside it (O_CREAT|O_EXCL|O_NOFOLLOW: never into a file
    or through a symlink someone laid there), which then replaces `path` itself (a symlink at `path` is
    replaced, never followed)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name[:200]}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode & 0o777)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # umask may have taken bits away
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def make_dir(path, mode):
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    return path
