"""Running external commands for the long build steps: logged, optionally echoed, failing clearly.

Every external command of the host side goes through this module: Runner.run (a build step, logged),
checked_output (a short command whose failure is a failed step), probe (a question whose failure is
an answer: a version, a listing) and stop_process (ending a long-lived child started with Popen,
where the code says why it needs one).

Every stage of a build gets a Runner bound to one log file. `run()` appends the command and
its output to that log; with verbose=True it also echoes the command line. A non-zero exit
raises StepFailed naming the step, the exit status and the log, with the log's last lines.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from image.errors import StepFailed, UserError


def tail(path: Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def checked_output(step: str, cmd: Sequence[str], **kwargs) -> str:
    """A short command outside a build log (a query, a tool run once): its stdout, or StepFailed
    naming the step, the command and the end of what it said (never a CalledProcessError traceback)."""
    try:
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    except FileNotFoundError:
        raise StepFailed(step, f"{cmd[0]} is not installed") from None
    except subprocess.TimeoutExpired as e:
        raise StepFailed(step, f"{cmd[0]} did not finish within {e.timeout:.0f}s") from None
    if proc.returncode != 0:
        said = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise StepFailed(step, f"{shlex.join(str(c) for c in cmd)} exited {proc.returncode}"
                               + (f": {said}" if said else ""))
    return proc.stdout


def probe(cmd: Sequence[str | os.PathLike], *, timeout: float = 30, env: dict | None = None,
          input: str | None = None) -> subprocess.CompletedProcess | None:
    """A question to a program whose failure is itself an answer (what version is this binary? which
    loop devices are there?): the finished process, whatever its exit status (text output captured),
    or None when the program is missing, cannot run, or does not answer within timeout. Not logged.
    env: variables added to this process's environment."""
    try:
        return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, input=input,
                              stdin=subprocess.DEVNULL if input is None else None,
                              env=None if env is None else {**os.environ, **env})
    except (OSError, subprocess.TimeoutExpired):
        return None


def stop_process(proc: subprocess.Popen | None, grace: float = 15.0, sig: int = signal.SIGTERM) -> None:
    """Stop a child we started: `sig` (SIGTERM: a clean stop; SIGKILL: a power cut), up to `grace`
    seconds to exit, then SIGKILL; always reaped, so no zombie and no port or lock left held."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Runner:
    def __init__(self, log_path: Path, verbose: bool = False, out=sys.stderr):
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.verbose = verbose
        self.out = out
        self.step_name = "build"
        self.durations: dict[str, float] = {}   # step name -> seconds, in order: the build's profile

    def say(self, message: str) -> None:
        print(message, file=self.out, flush=True)
        self._log(f"# {message}\n")

    def _log(self, text: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(text)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """A named stage: prints its start and duration; failures inside name it."""
        previous, self.step_name = self.step_name, name
        start = time.monotonic()
        self.say(f"==> {name}")
        try:
            yield
        finally:
            self.step_name = previous
            seconds = time.monotonic() - start
            self.durations[name] = round(self.durations.get(name, 0.0) + seconds, 2)
        self.say(f"    {name}: done in {seconds:.0f}s")

    def run(self, cmd: Sequence[str | os.PathLike], *, env: dict | None = None, cwd=None,
            input: bytes | None = None, capture: bool = False, check: bool = True,
            timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run cmd, its output appended to the log (or captured and returned with capture=True)."""
        argv = [str(c) for c in cmd]
        line = shlex.join(argv)
        if self.verbose:
            print(f"    $ {line}", file=self.out, flush=True)
        self._log(f"$ {line}\n")
        full_env = None if env is None else {**os.environ, **env}
        with open(self.log_path, "ab") as logf:
            try:
                proc = subprocess.run(
                    argv, env=full_env, cwd=cwd, input=input, timeout=timeout, check=False,
                    stdout=subprocess.PIPE if capture else logf, stderr=logf,
                    stdin=None if input is not None else subprocess.DEVNULL)
            except FileNotFoundError:
                raise StepFailed(self.step_name, f"{argv[0]} is not installed", self.log_path) from None
            except subprocess.TimeoutExpired:
                raise StepFailed(self.step_name, f"{argv[0]} did not finish within {timeout:.0f}s",
                                 self.log_path) from None
        if check and proc.returncode != 0:
            last = tail(self.log_path, 15)
            detail = f"{argv[0]} exited with status {proc.returncode}"
            if last:
                detail += "\n" + "\n".join("    " + x for x in last.splitlines())
            raise StepFailed(self.step_name, detail, self.log_path)
        return proc

    def output(self, cmd: Sequence[str | os.PathLike], **kw) -> str:
        return self.run(cmd, capture=True, **kw).stdout.decode()


def require_tools(tools: dict[str, tuple[str, str]]) -> None:
    """Fail before any work when host tools are missing. tools: {command: (apt package, dnf package)}."""
    missing = {cmd: pkgs for cmd, pkgs in tools.items() if shutil.which(cmd) is None}
    if missing:
        apt = sorted({p[0] for p in missing.values()})
        dnf = sorted({p[1] for p in missing.values()})
        raise UserError(f"missing host tools: {', '.join(sorted(missing))}; install them with "
                        f"'apt-get install {' '.join(apt)}' or 'dnf install {' '.join(dnf)}'")


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise UserError(f"{what}: needs root (loop devices and mounts); run it with sudo")
