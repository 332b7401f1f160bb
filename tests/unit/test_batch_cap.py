"""The batch cap: bucket sizes, the fitted best size, and the windows that feed the fit."""

from __future__ import annotations

import pytest

from service.pipeline.batch_cap import (
    _PROBE_EVERY,
    _REFIT_EVERY,
    BatchCost,
    best_size,
    bucket_for,
    bucket_sizes,
)


def test_buckets_are_powers_of_two_then_the_maximum() -> None:
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(8) == (1, 2, 4, 8)
    assert bucket_sizes(12) == (1, 2, 4, 8, 12)
    assert bucket_sizes(32) == (1, 2, 4, 8, 16, 32)
    assert [bucket_for(n, bucket_sizes(12)) for n in (1, 3, 5, 8, 9, 12)] == [1, 4, 8, 8, 12, 12]


def test_a_model_whose_cost_per_image_grows_is_capped_small() -> None:
    """The U-Net measured on this CPU: 14.6 images/s at 1, 10.0 at 4, 8.0 at 8."""
    samples = [(1, 1 / 14.6), (4, 4 / 10.0), (8, 8 / 8.0)]
    assert best_size(samples, (1, 2, 4, 8), deadline_s=15) == 1


def test_a_fixed_cost_per_batch_makes_the_largest_batch_pay() -> None:
    buckets = bucket_sizes(32)
    samples = [(size, 0.02 + 0.001 * size) for size in buckets]
    assert best_size(samples, buckets, deadline_s=15) == 32


def test_the_best_size_is_interior_when_cost_is_quadratic() -> None:
    """seconds = 0.016 + 0.001 n^2: images/s peaks at sqrt(0.016 / 0.001) = 4."""
    buckets = bucket_sizes(32)
    samples = [(size, 0.016 + 0.001 * size**2) for size in buckets]
    assert best_size(samples, buckets, deadline_s=15) == 4


def test_the_deadline_bounds_the_cap() -> None:
    buckets = bucket_sizes(32)
    samples = [(size, 0.02 + 0.001 * size) for size in buckets]
    assert best_size(samples, buckets, deadline_s=0.03) == 8  # 16 would take 0.036 s
    assert best_size(samples, buckets, deadline_s=0.001) == 1  # nothing fits: the smallest


def test_near_ties_go_to_the_larger_batch() -> None:
    """Within 10%: timing noise, so the larger batch (fewer forwards per queue) wins."""
    samples = [(1, 0.010), (2, 0.0205), (4, 0.0415)]  # 100, 97.6, 96.4 images/s
    assert best_size(samples, (1, 2, 4), deadline_s=15) == 4


def test_without_two_sizes_seen_the_cap_is_the_maximum() -> None:
    assert best_size([], (1, 2, 4), deadline_s=15) == 4
    assert best_size([(2, 0.5), (2, 0.6)], (1, 2, 4), deadline_s=15) == 4


def test_serving_samples_refit_the_cap_and_keep_the_sizes_traffic_skips() -> None:
    caps: list[int] = []
    cost = BatchCost(bucket_sizes(8), deadline_s=15, on_cap=lambda cap, _limit: caps.append(cap))
    for size in cost.buckets:  # warm-up: flat cost per batch, the largest pays
        cost.add(size, 0.02, refit=False)
    assert cost.refit() == 8 and caps == [8]
    for _ in range(100):  # serving: only small batches, 250 and 167 images/s
        cost.add(1, 0.004)
        cost.add(2, 0.012)
    # 4 and 8 kept their warm-up timings (8: 400/s) and weigh as much as the 200 newer samples
    # (fitted alone, 1 and 2 would extrapolate to 133/s at 8, and the cap would drop to 1)
    assert cost.cap == 8 and len(caps) == 200 // 8 + 1


@pytest.mark.parametrize("size", [3, 5, 7])
def test_a_batch_counts_toward_the_smallest_bucket_that_holds_it(size: int) -> None:
    cost = BatchCost((1, 4, 8), deadline_s=15)
    cost.add(size, 0.1, refit=False)
    assert [len(window) for window in cost._samples.values()] == [0, int(size <= 4), int(size > 4)]


def _recording_cost() -> tuple[BatchCost, list[tuple[int, int]]]:
    """A cost of buckets 1, 2, 4, and the (cap, limit) pairs it hands on at each refit."""
    seen: list[tuple[int, int]] = []
    return BatchCost((1, 2, 4), deadline_s=15, on_cap=lambda cap, limit: seen.append((cap, limit))), seen


def _serve_until_refit(cost: BatchCost, size: int, seconds: float) -> None:
    """Samples of one size, up to and including the next refit."""
    for _ in range(_REFIT_EVERY):
        cost.add(size, seconds)


def test_a_cap_below_the_largest_bucket_probes_the_next_one_and_learns_it_pays() -> None:
    """A warm-up that timed size 4 at 0.2 s (its real cost: 0.016 s) caps the model at 2; the
    probe lets one refit period's batches reach 4, and their timing replaces the warm-up's."""
    cost, seen = _recording_cost()
    for size, seconds in ((1, 0.01), (2, 0.012), (4, 0.2)):
        cost.add(size, seconds, refit=False)
    assert cost.refit() == 2
    for _ in range(_PROBE_EVERY - 2):
        _serve_until_refit(cost, 2, 0.012)
    assert seen == [(2, 2)] * (_PROBE_EVERY - 1)  # capped at 2, and no batch may take more
    _serve_until_refit(cost, 2, 0.012)
    assert seen[-1] == (2, 4)  # the probe: the cap stays 2 (as reported), batches may take 4
    _serve_until_refit(cost, 4, 0.016)  # 250 images/s at 4 against 167 at 2
    assert cost.cap == 4 and seen[-1] == (4, 4)


def test_a_probe_of_a_size_that_costs_more_ends_at_the_next_refit() -> None:
    cost, seen = _recording_cost()
    for size, seconds in ((1, 0.01), (2, 0.012), (4, 0.2)):
        cost.add(size, seconds, refit=False)
    cost.refit()
    for _ in range(_PROBE_EVERY - 1):
        _serve_until_refit(cost, 2, 0.012)
    assert seen[-1] == (2, 4)
    _serve_until_refit(cost, 4, 0.1)  # measured again: still dearer per image than 2
    assert seen[-1] == (2, 2)
    # only the probe's timings are left of size 4: the warm-up's 0.2 s went with its first one
    assert [seconds for _, seconds in cost._samples[4]] == [0.1] * _REFIT_EVERY


def test_a_model_at_its_largest_bucket_never_probes() -> None:
    cost, seen = _recording_cost()
    for _ in range(3 * _PROBE_EVERY):
        _serve_until_refit(cost, 4, 0.01)
    assert set(seen) == {(4, 4)}
