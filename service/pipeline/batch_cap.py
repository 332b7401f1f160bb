"""Which batch size pays: each model's batch cost, measured at warm-up and while serving.

Throughput ``size / seconds(size)`` only rises with size when a batch costs ``a + b * size``
with ``a > 0``, so a linear fit (BentoML's adaptive batcher) always picks the largest batch.
Measured models do not all behave so: on a 2-core CPU the demo U-Net serves 14.6 images/s at
batch 1, 10.0 at 4 and 8.0 at 8, because the cost per image grows with the batch (its
activations stop fitting in cache). So the cost is fitted as ``a + b * size + c * size**2``:
``c > 0`` puts the best size at ``sqrt(a / c)``, ``c ~ 0`` at the largest one.

Why a quadratic fit over all samples rather than a mean per bucket: eager batches come in every
size, and a fit uses them all without binning; it also smooths the noise of single timings on
a shared machine (repeats differ by 15-20%) across neighbouring sizes, where one noisy bucket
mean could flip the choice. Its one blind spot, steps in the cost (a GPU that charges 17 like
32), is what the power-of-two buckets cover: compiled models run at bucket sizes only.

A sample's cost is core-seconds: on one CPU thread, the CPU time of that thread; on several,
the batch's seconds times its threads (``devices.CoreShare`` keeps other batches off its
cores); on a GPU, its seconds (``Replica.run_measured``). Warm-up times every size on one core
of a shared CPU, as a loaded server runs it. In wall seconds the sizes timed alone (every size
at warm-up, size 1 at one client) looked cheaper per image than the same sizes under load,
where a replica's thread also waits for a core, and warm-ups of other models beside it made
some sizes look dearer: the U-Net's cap swung between 1 and 4 while serving, and sank to 1 or
2 in a server of three models (150-260 requests a second at 32 clients, against 300-345 at 4).
In core-seconds a size costs the same whichever share of the cores it ran on, up to how well
the forward scales across threads. The deadline check reads core-seconds too: under load a
batch's wall time can exceed them, which a deadline of seconds leaves room for.

The samples are kept in a window per bucket (a batch counts toward the smallest bucket that
holds it), and the fit is over each bucket's mean (size, seconds): the sizes traffic rarely
reaches keep their warm-up timings instead of being pushed out by the sizes it often reaches,
and a bucket with many samples does not outweigh one with a single warm-up timing.

A cap below the largest bucket would keep the larger buckets' timings for ever, since no batch
above the cap runs. One mis-timed warm-up (the U-Net's size 4 timed on a cold thread at 2.5x
its cost) held the demo U-Net's cap at 2 instead of 4: 317 against 429 requests a second at 32
clients. So every ``_PROBE_EVERY`` refits, a capped model probes: the batcher may take the next
bucket up until the next refit, and that bucket's first sample in the probe replaces its old
ones. A probe of a size that really costs more lasts one refit period, a sixteenth of the time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

# A smaller bucket is chosen only when it beats the larger ones by this much: timings on a
# shared machine are that noisy, and between equals the larger batch drains a queue in fewer
# forwards.
_MARGIN = 0.10
_WINDOW_PER_BUCKET = 16
_REFIT_EVERY = 8  # samples between refits while serving (a refit is a small least squares)
_PROBE_EVERY = 16  # refits between probes of the bucket above a cap


def bucket_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two below ``max_batch_size``, then ``max_batch_size`` itself: the sizes a
    compiled model is warmed (and padded) to, and the caps the batcher can be given."""
    sizes = [1 << power for power in range(max_batch_size.bit_length()) if 1 << power < max_batch_size]
    return (*sizes, max_batch_size)


def bucket_for(size: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``size`` items (``size`` is at most the largest)."""
    return next(bucket for bucket in buckets if bucket >= size)


class BatchCost:
    """One model's (size, seconds) samples and the cap they imply (used on the event loop)."""

    def __init__(
        self,
        buckets: Sequence[int],
        deadline_s: float,
        on_cap: Callable[[int, int], None] | None = None,
    ) -> None:
        self.buckets = tuple(buckets)
        self.deadline_s = deadline_s  # a capped batch must be predicted to take at most this
        self.cap = self.buckets[-1]
        self._on_cap = on_cap
        self._samples = {bucket: deque[tuple[int, float]](maxlen=_WINDOW_PER_BUCKET) for bucket in buckets}
        self._since_fit = 0
        self._refits = 0
        self._probed: int | None = None  # the bucket a probe lets batches reach, until its first sample

    def add(self, size: int, seconds: float, *, refit: bool = True) -> None:
        """One timed batch, in core-seconds; every few samples (``refit``) the cap is chosen again."""
        bucket = bucket_for(size, self.buckets)
        if bucket == self._probed:  # measured again now: its old timings go
            self._samples[bucket].clear()
            self._probed = None
        self._samples[bucket].append((size, seconds))
        self._since_fit += 1
        if refit and self._since_fit >= _REFIT_EVERY:
            self.refit()

    def refit(self) -> int:
        """Chooses the cap from the samples now held and returns it; ``on_cap`` is told the cap
        and the most a batch may take until the next refit (the cap, or the bucket above it
        during a probe)."""
        samples = [_mean(window) for window in self._samples.values() if window]
        self._since_fit = 0
        self._refits += 1
        cap = best_size(samples, self.buckets, self.deadline_s)
        self.cap = cap
        limit = cap
        self._probed = None
        if cap < self.buckets[-1] and self._refits % _PROBE_EVERY == 0:
            limit = self._probed = self.buckets[self.buckets.index(cap) + 1]
        if self._on_cap is not None:
            self._on_cap(cap, limit)
        return cap


def best_size(samples: Sequence[tuple[float, float]], buckets: Sequence[int], deadline_s: float) -> int:
    """The bucket with the best fitted images/s among those predicted within ``deadline_s``
    (the largest within ``_MARGIN`` of the best); the largest bucket while the samples say
    nothing (fewer than two sizes, or no positive prediction); the smallest when all are late.

    The fit is only read at bucket sizes, which warm-up timed: it interpolates, never extrapolates.
    """
    coefficients = _fit(samples)
    if coefficients is None:
        return buckets[-1]
    predicted = {bucket: float(np.polyval(coefficients[::-1], bucket)) for bucket in buckets}
    positive = [bucket for bucket in buckets if predicted[bucket] > 0]
    if not positive:
        return buckets[-1]
    feasible = [bucket for bucket in positive if predicted[bucket] <= deadline_s] or positive[:1]
    throughput = {bucket: bucket / predicted[bucket] for bucket in feasible}
    best = max(throughput.values())
    return max(bucket for bucket in feasible if throughput[bucket] >= (1 - _MARGIN) * best)


def _mean(window: Sequence[tuple[int, float]]) -> tuple[float, float]:
    return (
        sum(size for size, _ in window) / len(window),
        sum(seconds for _, seconds in window) / len(window),
    )


def _fit(samples: Sequence[tuple[float, float]]) -> np.ndarray | None:
    """Least-squares coefficients ``a, b[, c]`` of seconds on size: quadratic once three sizes
    were seen, linear with two, ``None`` with fewer."""
    sizes = np.array([size for size, _ in samples], dtype=np.float64)
    distinct = len(np.unique(sizes))
    if distinct < 2:
        return None
    design = np.vander(sizes, min(2, distinct - 1) + 1, increasing=True)
    times = np.array([seconds for _, seconds in samples], dtype=np.float64)
    coefficients: np.ndarray = np.linalg.lstsq(design, times, rcond=None)[0]
    return coefficients
