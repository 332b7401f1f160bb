"""One queue per model that turns single requests into batches for whichever replica is idle.

Design after Ray Serve's batcher: the queue object owns the batch size, the wait timer (started
when a batch's first item arrived) and the in-flight futures. Replicas *pull*: an idle replica
awaits ``next_batch``, so batches go to the least busy replica without a scheduler. With
``max_delay_s == 0`` an idle replica takes everything queued at once, so no request ever waits
while a replica is free and batches grow by themselves under load.

Every request's future is settled exactly once; a request whose caller has gone (cancelled
future) is skipped when its turn comes instead of costing a forward.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from service.errors import QueueFull

PayloadT = TypeVar("PayloadT")
TagT = TypeVar("TagT")


@dataclass(eq=False, slots=True)
class _Ticket:
    """One request: its future resolves to the outputs of all its items, in order."""

    future: asyncio.Future[list[Any]]
    results: list[Any]
    remaining: int

    def settle_one(self, index: int, output: Any) -> None:
        if self.future.done():
            return
        self.results[index] = output
        self.remaining -= 1
        if self.remaining == 0:
            self.future.set_result(self.results)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


@dataclass(eq=False, slots=True)
class _Item(Generic[PayloadT, TagT]):
    payload: PayloadT
    tag: TagT
    ticket: _Ticket
    index: int
    enqueued_at: float


@dataclass(eq=False)
class Batch(Generic[PayloadT, TagT]):
    """Items taken together for one forward; all share one ``tag`` (e.g. a model version)."""

    tag: TagT
    items: list[_Item[PayloadT, TagT]] = field(default_factory=list)

    @property
    def payloads(self) -> list[PayloadT]:
        return [item.payload for item in self.items]

    @property
    def oldest_enqueued_at(self) -> float:
        return min(item.enqueued_at for item in self.items)

    @property
    def first_arrivals(self) -> list[float]:
        """When each request whose first item is in this batch was queued (items leave the
        queue in order, so a request's first item is in the first batch that takes any)."""
        return [item.enqueued_at for item in self.items if item.index == 0]

    def settle(self, outputs: Sequence[Any]) -> None:
        """Hands output ``i`` to the request that queued item ``i``; an exception fails it."""
        for item, output in zip(self.items, outputs, strict=True):
            if isinstance(output, BaseException):
                item.ticket.fail(output)
            else:
                item.ticket.settle_one(item.index, output)

    def fail(self, error: BaseException) -> None:
        """Fails every request with an item in this batch (and only those)."""
        for item in self.items:
            item.ticket.fail(error)


class DynamicBatcher(Generic[PayloadT, TagT]):
    """Bounded per-model queue; ``submit`` from request handlers, ``next_batch`` from replicas."""

    def __init__(
        self,
        *,
        max_batch_size: int,
        max_delay_s: float = 0.0,
        max_queue_size: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.cap = max_batch_size  # the most items one batch takes now (``limit_to``)
        self.max_delay_s = max_delay_s
        self.max_queue_size = max_queue_size
        self._clock = clock
        self._queue: deque[_Item[PayloadT, TagT]] = deque()
        self._arrived = asyncio.Event()

    @property
    def depth(self) -> int:
        """Images waiting (including ones whose caller has gone and that will be skipped)."""
        return len(self._queue)

    def limit_to(self, cap: int) -> None:
        """Batches take at most ``cap`` items from now on (within 1..``max_batch_size``)."""
        self.cap = max(1, min(cap, self.max_batch_size))

    def submit(self, payloads: Sequence[PayloadT], tag: TagT) -> asyncio.Future[list[Any]]:
        """Queues one request's items; the future resolves to their outputs in order."""
        if len(self._queue) + len(payloads) > self.max_queue_size:
            raise QueueFull(
                f"the queue holds {len(self._queue)} images (limit {self.max_queue_size}); retry shortly",
                headers={"Retry-After": str(self._retry_after_s())},
            )
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        ticket = _Ticket(future, [None] * len(payloads), len(payloads))
        now = self._clock()
        self._queue.extend(_Item(payload, tag, ticket, index, now) for index, payload in enumerate(payloads))
        if not payloads:
            future.set_result([])
        self._arrived.set()
        return future

    async def next_batch(self) -> Batch[PayloadT, TagT]:
        """Waits for work; always returns at least one live item, all with the same tag."""
        while True:
            self._drop_abandoned_head()
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if self.max_delay_s > 0:
                await self._wait_to_fill()
                self._drop_abandoned_head()
                if not self._queue:
                    continue
            return self._take()

    def fail_queued(self, error: BaseException) -> int:
        """Fails every request that still has an item waiting (shutdown); returns how many."""
        tickets = {id(item.ticket): item.ticket for item in self._queue if not item.ticket.future.done()}
        self._queue.clear()
        for ticket in tickets.values():
            ticket.fail(error)
        return len(tickets)

    def _take(self) -> Batch[PayloadT, TagT]:
        batch: Batch[PayloadT, TagT] = Batch(self._queue[0].tag)
        queue = self._queue
        while queue and len(batch.items) < self.cap and queue[0].tag is batch.tag:
            item = queue.popleft()
            if not item.ticket.future.done():
                batch.items.append(item)
        return batch

    async def _wait_to_fill(self) -> None:
        """Delay mode: wait until a full batch (``cap``) is queued or the oldest item's delay ran out."""
        deadline = self._queue[0].enqueued_at + self.max_delay_s
        while len(self._queue) < self.cap:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _drop_abandoned_head(self) -> None:
        queue = self._queue
        while queue and queue[0].ticket.future.done():
            queue.popleft()

    def _retry_after_s(self) -> int:
        return max(1, math.ceil(self.max_delay_s + 1))
