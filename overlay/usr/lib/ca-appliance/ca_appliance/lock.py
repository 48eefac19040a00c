"""One command changes the CA at a time: an exclusive flock on /run/ca-appliance/lock (under --prefix).

Without it, a `backup` started while `renew-intermediate` was between its swap and its commit ran
recover() and undid the renewal, which then reported success. Commands that change the CA (setup,
backup, restore, renew-intermediate, join, recover, publish-page) take it and refuse at once, exit 2,
naming the command that holds it; the watch skips a run instead, and restart-if-stale waits.

The kernel drops a flock when its holder dies (a SIGKILL, a power cut clears /run anyway), so a
crashed command never blocks the next. The file is removed on release; a taker checks that the file it
locked is still the one at the path, so a release racing a new taker never lets two hold it.
"""
import contextlib
import fcntl
import os
import time

from .errors import UserError


class Busy(UserError):
    """Another command holds the lock. `holder`: what it wrote ("renew-intermediate, pid 812")."""

    def __init__(self, command, holder):
        self.holder = holder
        super().__init__(f"{command}: another ca-appliance command is changing the CA ({holder}); "
                         "run this one when it has finished")


def path(layout):
    return layout.path("/run/ca-appliance/lock")


def _holder(lock_path):
    try:
        text = lock_path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "a command that has just started"


def _make_parents(directory, created):
    """mkdir -p `directory`, adding to `created` what did not exist (removed again on release)."""
    while not directory.exists():
        try:
            _make_parents(directory.parent, created)
            directory.mkdir(mode=0o755)
            created.append(directory)
        except FileExistsError:     # another command made it meanwhile
            pass
        except FileNotFoundError:   # another command's release removed a parent meanwhile: again
            continue


def _try_take(lock_path, created):
    """The locked file's descriptor, or None when another process holds the lock."""
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:   # a holder's release removed the directory meanwhile
            _make_parents(lock_path.parent, created)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)   # its holder released and removed it between our open and our flock: again


@contextlib.contextmanager
def held(layout, command, wait=0.0, poll=0.5):
    """Hold the CA's lock for `command`; raise Busy when another command still holds it after `wait`
    seconds. Leaves nothing behind: the file, and the directories it made for it, go on release."""
    lock_path = path(layout)
    created = []
    deadline = time.monotonic() + wait
    try:
        _make_parents(lock_path.parent, created)
        while (fd := _try_take(lock_path, created)) is None:
            if time.monotonic() >= deadline:
                raise Busy(command, _holder(lock_path))
            time.sleep(poll)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{command}, pid {os.getpid()}\n".encode())
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)   # before the close: a taker that opened it meanwhile sees it is gone
            os.close(fd)
    finally:
        # /run/ca-appliance is the lock's alone (also when a killed holder made it); above it, what
        # this taker made. Deepest first; a directory another command uses now stays.
        for directory in dict.fromkeys([lock_path.parent, *reversed(created)]):
            try:
                directory.rmdir()
            except OSError:
                break
