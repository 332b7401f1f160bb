"""DynamicBatcher with plain payloads: no model, no HTTP, no sleeps (event-loop turns only)."""

from __future__ import annotations

import asyncio

import pytest

from service.errors import InferenceFailed, QueueFull
from service.pipeline.batching import DynamicBatcher

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_idle_replica_takes_everything_queued_at_once() -> None:
    batcher: DynamicBatcher[str, object] = DynamicBatcher(max_batch_size=8)
    batcher.submit(["a"], tag=None)
    batcher.submit(["b", "c"], tag=None)
    batch = await batcher.next_batch()
    assert batch.payloads == ["a", "b", "c"]
    assert batcher.depth == 0


async def test_batches_never_exceed_max_batch_size() -> None:
    batcher: DynamicBatcher[int, object] = DynamicBatcher(max_batch_size=3)
    batcher.submit(list(range(7)), tag=None)
    sizes = [len((await batcher.next_batch()).items) for _ in range(3)]
    assert sizes == [3, 3, 1]


async def test_a_cap_limits_batches_below_max_batch_size_and_stays_within_it() -> None:
    batcher: DynamicBatcher[int, object] = DynamicBatcher(max_batch_size=8)
    batcher.limit_to(2)
    batcher.submit(list(range(5)), tag=None)
    sizes = [len((await batcher.next_batch()).items) for _ in range(3)]
    assert sizes == [2, 2, 1]
    batcher.limit_to(100)
    assert batcher.cap == 8
    batcher.limit_to(0)
    assert batcher.cap == 1


async def test_outputs_return_to_their_request_in_order_across_batches() -> None:
    batcher: DynamicBatcher[int, object] = DynamicBatcher(max_batch_size=2)
    first = batcher.submit([10, 11, 12], tag=None)
    second = batcher.submit([20], tag=None)
    for _ in range(2):
        batch = await batcher.next_batch()
        batch.settle([p * 2 for p in batch.payloads])
    assert await first == [20, 22, 24]
    assert await second == [40]


async def test_request_spanning_batches_resolves_only_when_all_items_ran() -> None:
    batcher: DynamicBatcher[int, object] = DynamicBatcher(max_batch_size=2)
    future = batcher.submit([1, 2, 3], tag=None)
    batch = await batcher.next_batch()
    batch.settle(batch.payloads)
    assert not future.done()
    batch = await batcher.next_batch()
    batch.settle(batch.payloads)
    assert await future == [1, 2, 3]


async def test_abandoned_requests_are_skipped() -> None:
    batcher: DynamicBatcher[str, object] = DynamicBatcher(max_batch_size=8)
    gone = batcher.submit(["gone-1", "gone-2"], tag=None)
    kept = batcher.submit(["kept"], tag=None)
    gone.cancel()
    batch = await batcher.next_batch()
    assert batch.payloads == ["kept"]
    batch.settle(["ok"])
    assert await kept == ["ok"]


async def test_queue_bound_refuses_with_retry_after() -> None:
    batcher: DynamicBatcher[int, object] = DynamicBatcher(max_batch_size=2, max_queue_size=3)
    batcher.submit([1, 2], tag=None)
    with pytest.raises(QueueFull) as refused:
        batcher.submit([3, 4], tag=None)
    assert refused.value.status == 503
    assert int(refused.value.headers["Retry-After"]) >= 1
    assert batcher.depth == 2  # the refused request queued nothing


async def test_items_with_different_tags_never_share_a_batch() -> None:
    batcher: DynamicBatcher[str, object] = DynamicBatcher(max_batch_size=8)
    old, new = object(), object()
    batcher.submit(["a", "b"], tag=old)
    batcher.submit(["c"], tag=new)
    first = await batcher.next_batch()
    second = await batcher.next_batch()
    assert (first.tag, first.payloads) == (old, ["a", "b"])
    assert (second.tag, second.payloads) == (new, ["c"])


async def test_failure_fails_only_that_batchs_requests() -> None:
    batcher: DynamicBatcher[int, object] = DynamicBatcher(max_batch_size=1)
    doomed = batcher.submit([1], tag=None)
    fine = batcher.submit([2], tag=None)
    (await batcher.next_batch()).fail(InferenceFailed("boom"))
    (await batcher.next_batch()).settle(["two"])
    with pytest.raises(InferenceFailed):
        await doomed
    assert await fine == ["two"]


async def test_settling_after_the_caller_left_is_harmless() -> None:
    batcher: DynamicBatcher[int, object] = DynamicBatcher(max_batch_size=4)
    future = batcher.submit([1, 2], tag=None)
    batch = await batcher.next_batch()
    future.cancel()
    batch.settle([1, 2])  # no InvalidStateError
    batch.fail(InferenceFailed("late"))
    assert future.cancelled()


async def test_waiting_replica_wakes_on_submit_and_only_one_takes_the_work() -> None:
    batcher: DynamicBatcher[str, object] = DynamicBatcher(max_batch_size=8)
    waiters = [asyncio.create_task(batcher.next_batch()) for _ in range(2)]
    await _turns()
    assert not any(w.done() for w in waiters)
    batcher.submit(["x", "y"], tag=None)
    await _turns()
    done = [w for w in waiters if w.done()]
    assert len(done) == 1 and done[0].result().payloads == ["x", "y"]
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)


async def test_delay_mode_waits_to_fill_then_flushes_a_full_batch() -> None:
    batcher: DynamicBatcher[int, object] = DynamicBatcher(max_batch_size=3, max_delay_s=60.0)
    batcher.submit([1], tag=None)
    taker = asyncio.create_task(batcher.next_batch())
    await _turns()
    assert not taker.done()  # one item and 60 s left: it waits
    batcher.submit([2, 3], tag=None)
    await _turns()
    assert taker.done() and taker.result().payloads == [1, 2, 3]


async def test_delay_mode_flushes_a_partial_batch_when_the_first_item_is_due() -> None:
    now = [100.0]
    batcher: DynamicBatcher[int, object] = DynamicBatcher(
        max_batch_size=8, max_delay_s=0.005, clock=lambda: now[0]
    )
    batcher.submit([1], tag=None)
    now[0] += 0.010  # the first item's delay has already run out
    batch = await asyncio.wait_for(batcher.next_batch(), timeout=5)
    assert batch.payloads == [1]


async def test_empty_request_resolves_at_once() -> None:
    batcher: DynamicBatcher[int, object] = DynamicBatcher(max_batch_size=2)
    assert await batcher.submit([], tag=None) == []


async def test_fail_queued_fails_each_waiting_request_once_and_empties_the_queue() -> None:
    batcher: DynamicBatcher[int, object] = DynamicBatcher(max_batch_size=2)
    first = batcher.submit([1, 2, 3], tag=None)
    taken = await batcher.next_batch()  # items 1 and 2 are running on a replica
    second = batcher.submit([4], tag=None)
    assert batcher.fail_queued(RuntimeError("shutting down")) == 2
    assert batcher.depth == 0
    for future in (first, second):
        with pytest.raises(RuntimeError, match="shutting down"):
            await future
    taken.settle(["late-1", "late-2"])  # the running batch finishing later changes nothing
