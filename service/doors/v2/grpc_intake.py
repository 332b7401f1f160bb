"""A unary gRPC call's request message received within the process's body budget, as an HTTP
body is, and the memory of large messages given back to the kernel after them.

grpc.aio reads a unary call's whole message before any servicer code runs, so a burst of
large messages was held, parsed and copied at once before a budget could say no: 100 calls
of 19 MB took a server from 0.8 to 5 GB, and glibc kept 4 GB of it. Here the access log
interceptor serves every unary method as stream-unary (the same on the wire) and reads the
one message through ``MessageIntake``: at most ``max_inflight_body_bytes // max_body_bytes``
messages are being received at once (the others wait unread, held back by HTTP/2 flow
control), each is charged to ``Runtime.body_budget`` by its size before it is parsed and
holds it until the call ends, and a message past the budget is refused (RESOURCE_EXHAUSTED).
``grpc.max_receive_message_length`` (``max_body_bytes``) refuses a larger one before it is
read at all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf.message import DecodeError

from service.allocator import trim_heap
from service.errors import BadRequest, SlowUpload
from service.pipeline.budget import Reservation
from service.pipeline.runtime import Runtime

# A message this large is freed to the heap in large blocks that glibc keeps (its mmap
# threshold is fixed at 32 MiB): once it is gone, the heap is trimmed.
TRIM_AFTER_BYTES = 1 << 20


class MessageIntake:
    """The receive side of every unary call on one gRPC server."""

    def __init__(self, runtime: Runtime) -> None:
        limits = runtime.config.server
        self.budget = runtime.body_budget
        self.receiving = asyncio.Semaphore(max(1, limits.max_inflight_body_bytes // limits.max_body_bytes))
        self.timeout_s = limits.request_timeout_s  # as an HTTP body's upload: a slot is not held longer
        self.trimmer = HeapTrimmer()

    @contextlib.asynccontextmanager
    async def message(
        self, requests: AsyncIterator[bytes], parse: Callable[[bytes], Any], kind: str, *, queued: bool = True
    ) -> AsyncIterator[Any]:
        """The call's one message, parsed, its bytes held on the budget until the block ends;
        read in a receive slot unless not ``queued`` (health checks: never behind large messages).

        Raises ``BadRequest`` for no message or one that is not a valid ``kind``, ``SlowUpload``
        when it does not arrive within the request timeout, and the budget's ``QueueFull`` when
        its bytes do not fit now."""
        async with self.receiving if queued else contextlib.nullcontext():
            try:
                async with asyncio.timeout(self.timeout_s):
                    data = await _only_message(requests, kind)
            except TimeoutError:
                raise SlowUpload(f"the {kind} message did not arrive within {self.timeout_s:g} s") from None
            size = len(data)
            held: Reservation = self.budget.reserve(size)
        try:
            try:
                request = parse(data)
            except DecodeError:
                raise BadRequest(f"the request is not a valid {kind} message") from None
            del data  # the parsed message holds its own copy
            yield request
        finally:
            held.release()
            if size >= TRIM_AFTER_BYTES:
                self.trimmer.freed()


async def _only_message(requests: AsyncIterator[bytes], kind: str) -> bytes:
    """The call's one message, read to the stream's end: grpc's reader, left waiting for a
    second, would hold the first (its bytes) for as long as grpc keeps the call's objects."""
    messages = aiter(requests)
    data = await anext(messages, None)
    if data is None:
        raise BadRequest(f"the call carried no {kind} message")
    if await anext(messages, None) is not None:
        raise BadRequest(f"the call carried more than one {kind} message")
    return data


class HeapTrimmer:
    """``malloc_trim`` on a worker thread after large messages are freed, one at a time: a
    trim asked for while one runs runs once more after it, so the last message of a burst is
    always followed by one."""

    def __init__(self) -> None:
        self._running: asyncio.Future[bool] | None = None
        self._again = False

    def freed(self) -> None:
        if self._running is not None:
            self._again = True
            return
        self._running = asyncio.get_running_loop().run_in_executor(None, trim_heap)
        self._running.add_done_callback(self._done)

    def _done(self, _: asyncio.Future[bool]) -> None:
        self._running = None
        if self._again:
            self._again = False
            self.freed()
