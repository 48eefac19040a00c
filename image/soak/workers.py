"""Soak jobs side by side: a few worker threads take jobs from one queue until it is empty.

Under TCG a booting VM keeps about one host core busy (its vCPUs wait on each other for most of the
boot), so two VMs at once on two cores do nearly twice the work of one. A job may add jobs while it
runs (a surviving cut hands its VM to the command cuts), to the front of the queue; the worker that
added one is still taking jobs, so nothing added is left behind. Jobs record their own results: an
exception out of a job is a bug, kept and raised again once every worker has stopped.

Every VM a job starts is registered (`live`), so a Ctrl-C, or a worker's bug, kills them all: no
QEMU outlives the campaign."""
from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable

Job = Callable[[], None]


def default_workers(cores: int | None = None, memory_mb: int = 0, vm_memory_mb: int = 0) -> int:
    """How many VMs at once: one per host core, at most 4, and no more than half the memory holds."""
    cores = cores or os.cpu_count() or 1
    workers = max(1, min(4, cores))
    if vm_memory_mb and memory_mb:
        workers = max(1, min(workers, memory_mb // 2 // vm_memory_mb))
    return workers


def _auto_or_count(option: str, value, auto: Callable[[], int], highest: int, what: str) -> int:
    """An option that is 'auto' (the value `auto()` gives) or a whole number 1..highest; anything else is
    one line naming the option, the value and what is allowed (exit 2)."""
    from image.errors import UserError
    text = "auto" if value is None else str(value).strip().lower()
    if text in ("", "auto"):
        return auto()
    try:
        number = int(text)
    except ValueError:
        number = 0
    if not 1 <= number <= highest:
        raise UserError(f"{option}: {value!r} is not allowed (give 'auto' or a whole number of {what}, 1 to {highest})")
    return number


def parse_workers(value, cores: int | None = None, memory_mb: int = 0, vm_memory_mb: int = 0) -> int:
    """--parallel: 'auto' (default_workers) or a whole number of VMs, 1..16."""
    return _auto_or_count("--parallel", value, lambda: default_workers(cores, memory_mb, vm_memory_mb), 16, "VMs")


def default_vm_cpus(image_cpus: int, workers: int, cores: int | None = None) -> int:
    """vCPUs per soak VM: the host's cores shared out among the VMs that run at once, at most what the
    image asks for, at least one. Under TCG a vCPU is a host thread: two 2-vCPU guests on two cores
    overcommit the host, and a guest's vCPU that waits for a descheduled sibling (a lock, a TLB flush)
    burns its slice. Measured here (two VMs booting side by side): a first boot ready in 157 s with one
    vCPU each against 189 s with two, a later boot 113 s against 135 s."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(int(image_cpus), cores // max(1, int(workers))))


def parse_vm_cpus(value, image_cpus: int, workers: int, cores: int | None = None) -> int:
    """--vm-cpus: 'auto' (default_vm_cpus) or a whole number of vCPUs per VM, 1..64."""
    return _auto_or_count("--vm-cpus", value, lambda: default_vm_cpus(image_cpus, workers, cores), 64,
                          "vCPUs per VM")


def host_memory_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError):
        return 0


class Workers:
    """`workers` threads over one queue of jobs; `run()` returns when the queue is empty and all are idle."""

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))
        self._jobs: deque[Job] = deque()
        self._lock = threading.Lock()
        self._live: dict[int, object] = {}   # id -> target (a Target is a dataclass: not hashable)
        self._errors: list[BaseException] = []

    def add(self, job: Job, first: bool = False) -> None:
        with self._lock:
            (self._jobs.appendleft if first else self._jobs.append)(job)

    def live(self, target) -> None:
        """A target whose VM may be running: killed if the campaign is stopped."""
        with self._lock:
            self._live[id(target)] = target

    def gone(self, target) -> None:
        with self._lock:
            self._live.pop(id(target), None)

    def _take(self) -> Job | None:
        with self._lock:
            return self._jobs.popleft() if self._jobs and not self._errors else None

    def _work(self) -> None:
        while (job := self._take()) is not None:
            try:
                job()
            except BaseException as e:  # noqa: BLE001 - kept, raised by run() once all workers stopped
                with self._lock:
                    self._errors.append(e)

    def run(self) -> None:
        threads = [threading.Thread(target=self._work, name=f"soak-{i + 1}", daemon=True)
                   for i in range(self.workers)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.5)
        except BaseException:
            with self._lock:
                self._jobs.clear()
            self.kill_all()
            for thread in threads:
                thread.join(60)
            raise
        if self._errors:
            self.kill_all()
            raise self._errors[0]

    def kill_all(self) -> None:
        with self._lock:
            targets = list(self._live.values())
        for target in targets:
            try:
                target.forget_connection()
                target.vm.kill()
            except Exception:  # noqa: BLE001 - the others must still go
                pass
