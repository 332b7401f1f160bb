"""Per-version inference statistics in Triton's terms, fed where ``/metrics`` is observed.

Each ``ModelVersion`` holds one ``VersionStatistics``. The replica adds each batch it served
(``executed``, beside ``ModelMetrics.observe_batch``: the same size and the same inference
duration, split into staging the input, the forward and the postprocess) and the ``Call`` adds
each request's outcome (``answered``). Everything runs on the event loop, so nothing locks.
A request counts once in ``queue`` and the compute phases, in the batch that took its first
image: Triton's per-request figures, where a request never spans batches.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class Duration:
    """How many and how long in all (Triton's ``StatisticDuration``)."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += round(seconds * 1e9)


@dataclass(frozen=True, slots=True)
class Phases:
    """One batch's inference duration in its three parts, in seconds; they add up to it."""

    input_s: float
    infer_s: float
    output_s: float

    def within(self, total_s: float) -> Phases:
        """The same split with the forward taking what the parts leave of ``total_s`` (the
        thread hop and the wait for cores, which the metric's duration holds too)."""
        return Phases(self.input_s, max(total_s - self.input_s - self.output_s, 0.0), self.output_s)


@dataclass(slots=True)
class PhaseDurations:
    """Compute time by phase (Triton's ``compute_input``, ``compute_infer``, ``compute_output``)."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)

    def add(self, phases: Phases, count: int) -> None:
        """``count`` requests (or one batch) charged with ``phases`` each."""
        self.compute_input.add(phases.input_s * count, count)
        self.compute_infer.add(phases.infer_s * count, count)
        self.compute_output.add(phases.output_s * count, count)


@dataclass(slots=True)
class VersionStatistics:
    """What one version has served since it was loaded."""

    inference_count: int = 0  # images (batch entries) run
    execution_count: int = 0  # forwards
    last_inference_ms: int = 0  # ms since the epoch; 0: none yet
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute: PhaseDurations = field(default_factory=PhaseDurations)
    batches: dict[int, PhaseDurations] = field(default_factory=dict)  # by batch size

    def executed(self, size: int, started: float, arrivals: Sequence[float], phases: Phases) -> None:
        """A batch of ``size`` images that started at ``started`` (monotonic) and took
        ``phases``; ``arrivals``: when each request whose first image it ran was queued."""
        self.inference_count += size
        self.execution_count += 1
        self.last_inference_ms = int(time.time() * 1000)
        for arrived in arrivals:
            self.queue.add(max(started - arrived, 0.0))
        self.compute.add(phases, len(arrivals))
        by_size = self.batches.get(size)
        if by_size is None:
            by_size = self.batches[size] = PhaseDurations()
        by_size.add(phases, 1)

    def answered(self, succeeded: bool, duration_s: float) -> None:
        """A request's end: answered, or failed after it was admitted."""
        (self.success if succeeded else self.fail).add(duration_s)


@dataclass(slots=True)
class PhaseTimer:
    """Adds up a batch's phases on the thread that runs it (a batch split on out-of-memory
    runs its halves in turn). On a GPU, staging only queues the copy: the copy shows in the
    forward, which waits for the device."""

    input_s: float = 0.0
    infer_s: float = 0.0
    output_s: float = 0.0

    def phases(self) -> Phases:
        return Phases(self.input_s, self.infer_s, self.output_s)
