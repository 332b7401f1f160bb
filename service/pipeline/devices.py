"""Which devices a model's replicas go on, and how many CPU threads each replica may use.

Probing happens when a model is built, never at import.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch

from service.errors import ConfigError


def resolve_devices(devices: str | Sequence[str], cpu_replicas: int) -> list[torch.device]:
    """``auto``: every visible GPU, else the CPU; ``cpu``; or an explicit list, each checked.

    The CPU counts ``cpu_replicas`` times: on a CPU-only machine several single-threaded
    forwards side by side beat one forward spread over every core (measured here: twice the
    U-Net's throughput), because nothing else running beside them stalls a thread barrier.
    """
    if devices == "auto":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [torch.device("cuda", index) for index in range(count)] or [torch.device("cpu")] * cpu_replicas
    if devices == "cpu":
        return [torch.device("cpu")] * cpu_replicas
    resolved = [_check_device(name) for name in devices]
    if not resolved:
        raise ConfigError("devices: give 'auto', 'cpu' or a non-empty list such as [cuda:0]")
    return resolved


def _check_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"devices: {name!r} is not a device name (try cpu or cuda:0)") from None
    if device.type == "cuda":
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = 0 if device.index is None else device.index
        if index >= visible:
            raise ConfigError(
                f"devices: {name} is not visible here ({visible} CUDA devices); "
                "use 'auto' to take whatever the machine has"
            )
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise ConfigError(f"devices: {name!r} is not supported; use cpu or cuda:N")
    return device


class CoreShare:
    """The cores a model's CPU replicas split: a replica running alone uses them all (lowest
    latency), replicas running together one share each (highest throughput).

    A batch taken while more work waits in the queue counts the replica that will take that
    work as running already: it starts the moment this one does, and a batch that claimed
    every core alone would then share them with it. At 32 clients the demo U-Net answered 14%
    more requests a second, with a third of the p99, once loaded replicas stopped going wide.
    A batch given more than one thread runs on the ``wide_lane`` thread, one batch given one
    on its replica's own thread: see ``wide_lane`` for why.

    Threads are counted across every model of the process (``holding`` counts a model's fixed
    ``torch_threads`` too): a batch takes at most the cores no other batch holds, one thread
    while a wide batch runs, and while a wide batch and others hold every core, it waits for a
    core to come free (at most ``_WIDE_WAIT_S``). Started anyway, it would put a third thread
    on two cores, and a forward on several threads meets at a barrier hundreds of times, each
    time waiting for its slowest thread: at 8 clients the demo U-Net's batches that overlapped
    a wide one took 0.1-1 s against 25 ms, and held its p99 at 400 ms. One-thread batches of
    several models may still outnumber the cores: with no barrier, that only shares them.
    """

    def __init__(self, cores: int, replicas: int) -> None:
        self.cores = cores
        self.replicas = replicas
        self._running = 0

    @contextmanager
    def claim(self, work_waiting: bool = False) -> Iterator[int]:
        """The torch threads to use for one batch, held until it ends. ``work_waiting``: the
        queue still holds images after this batch was taken."""
        with _HELD.changed:
            # bounded: a forward that hangs on several threads must not stop every other batch
            _HELD.changed.wait_for(lambda: not _HELD.wide or _HELD.threads < self.cores, _WIDE_WAIT_S)
            self._running += 1
            together = min(self.replicas, self._running + 1) if work_waiting else self._running
            threads = max(1, min(self.cores // together, self.cores - _HELD.threads))
            if _HELD.wide:  # the one wide lane is taken: a second wide batch would queue behind it
                threads = 1
            _HELD.take(threads, wide=threads > 1)
        try:
            yield threads
        finally:
            with _HELD.changed:
                self._running -= 1
                _HELD.give_back(threads, wide=threads > 1)


@contextmanager
def holding(threads: int) -> Iterator[None]:
    """Counts a batch on a fixed number of threads (a model's ``torch_threads``) among the
    held ones, so that ``CoreShare`` batches beside it take only the cores it leaves free.
    Nothing waits for it, and it waits for nothing: its threads are the config's to choose,
    and it may run for long (a compile at reload)."""
    _HELD.take(threads, wide=False)
    try:
        yield
    finally:
        _HELD.give_back(threads, wide=False)


class _HeldThreads:
    """The torch threads that CPU batches of every model hold now, and whether a ``CoreShare``
    batch on several threads (on the ``wide_lane``) is among them. ``changed`` is re-entrant:
    ``CoreShare.claim`` holds it from its wait to its ``take``."""

    def __init__(self) -> None:
        self.changed = threading.Condition(threading.RLock())
        self.threads = 0
        self.wide = False

    def take(self, threads: int, wide: bool) -> None:
        with self.changed:
            self.threads += threads
            self.wide = self.wide or wide

    def give_back(self, threads: int, wide: bool) -> None:
        with self.changed:
            self.threads -= threads
            self.wide = self.wide and not wide
            self.changed.notify_all()


_HELD = _HeldThreads()
# Far above any wide batch measured here (resnet18's batch of 8 on two cores: 0.2-0.4 s).
_WIDE_WAIT_S = 2.0


@functools.cache
def wide_lane() -> ThreadPoolExecutor:
    """The one thread of the process that runs CPU batches on more than one core.

    torch's OpenMP (libgomp) keeps a pool of workers for every thread that ever ran a parallel
    region, and once the pools hold more threads than there are cores it stops spin-waiting
    between regions and sleeps instead: measured here, a U-Net forward on 2 threads took 3.9 ms
    on the first thread that went parallel and 5.1 ms (as slow as 1 thread) on any other while
    a 2-thread pool existed elsewhere. A model's forward is hundreds of small regions. Running
    every multi-thread CPU batch of every model on this one thread, and everything else on
    one thread (no pool), keeps the pools within the cores.
    """
    return ThreadPoolExecutor(1, thread_name_prefix="cpu-wide")


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota (a
    Kubernetes CPU limit), since a pod on a 64-core node with ``limits.cpu: 2`` sees all 64
    cores in its mask but is throttled to 2."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, math.floor(quota))) if quota is not None else cores


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup's CFS quota (v2 ``cpu.max``, or v1), None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None
