"""A stream's flow control (gRPC ``ModelStreamInfer``): each request on a stream is answered on
its own, at most ``window`` at once; with ``window`` held the stream stops reading its client
(back-pressure through gRPC's flow control) instead of buffering. A request holds its slot until
its answer is written, so a client that stops reading answers stops the stream too. Answers go
out as they finish (out of order: each carries its own request's id). A stream that ends early
(the client cancelled it or hung up) cancels the requests it still holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TypeVar

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


class _End:
    """The reader has seen the client's last request and every answer is queued."""


async def answered(
    requests: AsyncIterable[RequestT], answer: Callable[[RequestT], Awaitable[ResponseT]], window: int
) -> AsyncIterator[ResponseT]:
    """Each request's ``answer`` as it finishes; ``answer`` turns a request's errors into its
    response (anything it raises ends the stream with that error)."""
    finished: asyncio.Queue[ResponseT | BaseException | _End] = asyncio.Queue()  # <= window items
    slots = asyncio.Semaphore(window)
    running: set[asyncio.Task[None]] = set()

    async def one(request: RequestT) -> None:
        try:
            finished.put_nowait(await answer(request))
        except Exception as exc:  # a bug: surfaced by ending the stream with it
            finished.put_nowait(exc)

    async def read() -> None:
        incoming = aiter(requests)
        try:
            while True:
                await slots.acquire()  # before reading: a request read always has its slot
                try:
                    request = await anext(incoming)
                except StopAsyncIteration:
                    break
                task = asyncio.create_task(one(request))
                running.add(task)
                task.add_done_callback(running.discard)
            await asyncio.gather(*running)
        except Exception as exc:  # the client's side of the stream failed
            finished.put_nowait(exc)
        finally:
            finished.put_nowait(_End())

    reader = asyncio.create_task(read())
    try:
        while True:
            item = await finished.get()
            if isinstance(item, _End):
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            slots.release()  # written: the next request may be read
    finally:
        held = [reader, *running]
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
