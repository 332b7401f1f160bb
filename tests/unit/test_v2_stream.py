"""``ModelStreamInfer``'s flow control with fakes and event gates: no model, no gRPC, no sleeps.

The window bounds what a stream holds (requests read but not yet answered and written), the
stream stops reading its client at the bound, answers leave as they finish, and a stream
closed early cancels the requests it holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from service.doors.v2.stream import answered
from tests.support.waiting import await_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Client:
    """A stream's client side: counts how many requests the server has read."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.read = 0

    async def requests(self) -> AsyncIterator[int]:
        for number in range(self.count):
            self.read += 1
            yield number


class Gated:
    """An ``answer`` whose calls wait until their gate opens; notes which are running."""

    def __init__(self) -> None:
        self.gates: dict[int, asyncio.Event] = {}
        self.running: set[int] = set()
        self.cancelled: set[int] = set()

    async def __call__(self, request: int) -> str:
        gate = self.gates.setdefault(request, asyncio.Event())
        self.running.add(request)
        try:
            await gate.wait()
        except asyncio.CancelledError:
            self.cancelled.add(request)
            raise
        finally:
            self.running.discard(request)
        return f"answer {request}"

    def open(self, request: int) -> None:
        self.gates.setdefault(request, asyncio.Event()).set()


async def test_a_full_window_stops_reading_until_an_answer_is_written() -> None:
    client, answer = Client(10), Gated()
    stream = answered(client.requests(), answer, window=3)
    first = asyncio.ensure_future(anext(stream))
    await await_until(lambda: answer.running == {0, 1, 2}, 5, "three requests running")
    for _ in range(20):  # event-loop turns: every chance for the reader to take a fourth
        await asyncio.sleep(0)
    assert client.read == 3, "the stream read past its window"

    answer.open(1)
    assert await first == "answer 1", "answers leave as they finish, not in order"
    second = asyncio.ensure_future(anext(stream))  # answer 1 written: its slot is free
    await await_until(lambda: 3 in answer.running, 5, "the fourth request read")
    assert client.read == 4 and answer.running == {0, 2, 3}

    for request in range(10):
        answer.open(request)
    rest = [await second] + [item async for item in stream]
    assert sorted([*rest, "answer 1"]) == sorted(f"answer {n}" for n in range(10))


async def test_closing_the_stream_early_cancels_what_it_holds() -> None:
    client, answer = Client(5), Gated()
    answer.open(0)
    stream = answered(client.requests(), answer, window=4)
    assert await anext(stream) == "answer 0"  # still holding its slot: not yet written
    await await_until(lambda: answer.running == {1, 2, 3}, 5, "three more requests running")
    await stream.aclose()  # what grpc does when the client cancels the stream
    assert answer.cancelled == {1, 2, 3}


async def test_an_error_the_answer_raises_ends_the_stream_with_it() -> None:
    async def answer(request: int) -> str:
        if request == 2:
            raise RuntimeError("a bug")
        return f"answer {request}"

    with pytest.raises(RuntimeError, match="a bug"):
        [item async for item in answered(Client(5).requests(), answer, window=1)]
