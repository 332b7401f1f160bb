"""DecodePool: a new request's first image first (the smallest first), then images in turn
across requests, one at a time per request; the decode budget refuses the rest of a request;
images not started are closed when a request fails or stops waiting; the metrics count what
waits and the seconds spent."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from service.errors import BadImage, NotReady, TooLarge
from service.ops.metrics import Metrics
from service.pipeline.decode_pool import DecodePool
from tests.support.waiting import await_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


class Image:
    """An opened image stand-in: a name, and whether it was closed."""

    def __init__(self, name: str, size: tuple[int, int] = (1, 1)) -> None:
        self.name = name
        self.size = size
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Decoder:
    """Decodes an ``Image`` into its name after ``seconds``, recording the order and overlap."""

    def __init__(self, seconds: float = 0.0, hold: str | None = None) -> None:
        self.seconds = seconds
        self.hold = hold  # the image whose decode waits for ``release``
        self.release = threading.Event()
        self.order: list[str] = []
        self.running: dict[str, int] = {}
        self.most_at_once: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, image: Any) -> Any:
        request = image.name[0]
        with self._lock:
            self.order.append(image.name)
            self.running[request] = self.running.get(request, 0) + 1
            self.most_at_once[request] = max(self.most_at_once.get(request, 0), self.running[request])
        if image.name.endswith("bad"):
            raise BadImage("the image does not decode")
        if image.name == self.hold:
            self.release.wait(5)
        time.sleep(self.seconds)
        with self._lock:
            self.running[request] -= 1
        return image.name


def _images(request: str, count: int) -> list[Any]:
    return [Image(f"{request}{index}") for index in range(count)]


def _pool(executor: ThreadPoolExecutor, threads: int, budget_s: float = 60.0) -> tuple[DecodePool, Metrics]:
    metrics = Metrics()
    return DecodePool(executor, threads, budget_s, metrics), metrics


def _sample(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


async def test_one_thread_takes_an_image_of_each_request_in_turn(executor: ThreadPoolExecutor) -> None:
    pool, metrics = _pool(executor, threads=1)
    decoder = Decoder()
    futures = [pool.decode(decoder, _images(name, count)) for name, count in (("a", 3), ("b", 3), ("c", 1))]
    assert _sample(metrics, "model_serve_decode_queue_images") == 6  # one is decoding
    results = await asyncio.gather(*futures)
    assert results == [["a0", "a1", "a2"], ["b0", "b1", "b2"], ["c0"]]
    assert decoder.order == ["a0", "b0", "c0", "a1", "b1", "a2", "b2"]
    assert _sample(metrics, "model_serve_decode_queue_images") == 0
    assert _sample(metrics, "model_serve_decode_threads") == 1


async def test_a_new_request_goes_before_those_that_had_a_turn(executor: ThreadPoolExecutor) -> None:
    pool, _ = _pool(executor, threads=1)
    decoder = Decoder(hold="a1")
    first, second = pool.decode(decoder, _images("a", 3)), pool.decode(decoder, _images("b", 3))
    await await_until(lambda: "a1" in decoder.order, 5, "a's second image decoding")
    newcomer = pool.decode(decoder, _images("c", 1))
    decoder.release.set()
    assert await asyncio.gather(first, second, newcomer) == [["a0", "a1", "a2"], ["b0", "b1", "b2"], ["c0"]]
    assert decoder.order == ["a0", "b0", "a1", "c0", "b1", "a2", "b2"]


async def test_of_the_new_requests_the_smallest_first_image_goes_first(executor: ThreadPoolExecutor) -> None:
    pool, _ = _pool(executor, threads=1)
    decoder = Decoder(hold="a0")
    sizes = {"a": (10, 10), "b": (4000, 4000), "c": (200, 200), "d": (200, 200)}
    futures = [pool.decode(decoder, [Image(f"{name}0", size)]) for name, size in sizes.items()]
    await await_until(lambda: decoder.order == ["a0"], 5, "a's image decoding")
    decoder.release.set()
    await asyncio.gather(*futures)
    assert decoder.order == ["a0", "c0", "d0", "b0"]


async def test_a_request_never_decodes_two_images_at_once(executor: ThreadPoolExecutor) -> None:
    pool, metrics = _pool(executor, threads=2)
    decoder = Decoder(seconds=0.01)
    assert await pool.decode(decoder, _images("a", 4)) == ["a0", "a1", "a2", "a3"]
    assert decoder.most_at_once == {"a": 1}  # its pixel reservation covers one image
    assert _sample(metrics, "model_serve_decode_busy_seconds_total") >= 4 * 0.01


async def test_past_its_budget_a_request_is_refused_and_its_other_images_closed(
    executor: ThreadPoolExecutor,
) -> None:
    pool, metrics = _pool(executor, threads=1, budget_s=0.05)
    decoder, images = Decoder(seconds=0.03), _images("a", 6)
    with pytest.raises(TooLarge, match=r"more than 0.05 s .*max_decode_seconds_per_request.*2 of 6"):
        await pool.decode(decoder, images)
    assert decoder.order == ["a0", "a1"]
    assert all(image.closed for image in images[2:])
    assert _sample(metrics, "model_serve_decode_queue_images") == 0


async def test_a_bad_image_fails_its_request_only(executor: ThreadPoolExecutor) -> None:
    pool, _ = _pool(executor, threads=1)
    decoder, broken = Decoder(), [Image("abad"), Image("a1")]
    failed, fine = pool.decode(decoder, broken), pool.decode(decoder, _images("b", 2))
    with pytest.raises(BadImage):
        await failed
    assert await fine == ["b0", "b1"]
    assert broken[1].closed and "a1" not in decoder.order


async def test_a_request_that_stops_waiting_has_its_images_closed(executor: ThreadPoolExecutor) -> None:
    pool, metrics = _pool(executor, threads=1)
    decoder = Decoder(seconds=0.05)
    first, images = pool.decode(decoder, _images("a", 1)), _images("b", 3)
    waiting = pool.decode(decoder, images)
    waiting.cancel()  # its deadline passed, or its client hung up
    assert await first == ["a0"]
    assert all(image.closed for image in images) and decoder.order == ["a0"]
    assert _sample(metrics, "model_serve_decode_queue_images") == 0


async def test_after_the_threads_shut_down_a_request_is_503_not_left_waiting() -> None:
    executor = ThreadPoolExecutor(1)
    executor.shutdown()
    pool, _ = _pool(executor, threads=1)
    images = _images("a", 2)
    with pytest.raises(NotReady, match="stopping"):
        await pool.decode(Decoder(), images)
    assert all(image.closed for image in images)


async def test_a_request_without_images_has_no_jobs(executor: ThreadPoolExecutor) -> None:
    pool, _ = _pool(executor, threads=1)
    assert await pool.decode(Decoder(), []) == []
