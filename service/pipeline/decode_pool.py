"""The decode threads shared by every request, taken image by image in turn across requests.

Handing each request's whole decode to a thread pool ran requests first come, first served: four
requests of 64 heavy JPEGs (0.41 s each) held both threads for half a minute and a 200x200 PNG
queued behind them answered 504. Here a free thread takes the first image of a request that has
not had one yet (the one with the fewest pixels, the earliest of equals), else the next image of
the request at the front of a ring of the others, which then goes to the back. A small request
so waits only for a thread to be free, whatever the requests before it carry, and those share
the threads image by image.

A request has one image decoding at a time, never more: the pixel budget reserves its largest
image once (``ServedModel.prepare``), so its images must not be decoded side by side. The time
its images spend in the threads is counted against ``server.max_decode_seconds_per_request``:
past it the rest are not decoded and the request is 413. The bookkeeping runs on the event loop
(the threads only decode), so it needs no lock.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial

from service.errors import NotReady, TooLarge
from service.images.decode import Opened
from service.ops.metrics import Metrics
from service.pipeline.tasks import Job

DecodeOne = Callable[[Opened], Job]
"""One opened image of a request to its job (``ServedModel``'s decode, the request's wants bound)."""


class _Request:
    """One request's images: those not started, the jobs done, and its decode seconds so far."""

    __slots__ = ("decode_one", "future", "jobs", "seconds", "waiting")

    def __init__(
        self, decode_one: DecodeOne, images: list[Opened], future: asyncio.Future[list[Job]]
    ) -> None:
        self.decode_one = decode_one
        self.future = future
        self.waiting: deque[tuple[int, Opened]] = deque(enumerate(images))
        self.jobs: list[Job | None] = [None] * len(images)
        self.seconds = 0.0

    def close_waiting(self) -> int:
        """Closes the images not started (their pixels are never decoded); how many there were."""
        count = len(self.waiting)
        for _, image in self.waiting:
            image.close()
        self.waiting.clear()
        return count


class DecodePool:
    """``threads`` decode threads of ``executor`` (which runs nothing else), shared fairly."""

    def __init__(self, executor: Executor, threads: int, budget_s: float, metrics: Metrics) -> None:
        self.threads = threads
        self.budget_s = budget_s
        self._executor = executor
        # requests with an image waiting and none decoding: those not started yet, and the others
        self._new: deque[_Request] = deque()
        self._ring: deque[_Request] = deque()
        self._running = 0
        self._waiting = 0  # images of every request not started yet
        self._busy = metrics.decode_busy
        metrics.decode_threads.set(threads)
        metrics.decode_waiting.set_function(lambda: self._waiting)

    def decode(self, decode_one: DecodeOne, images: list[Opened]) -> asyncio.Future[list[Job]]:
        """Each image's job, in order; a request that stops waiting (its deadline, a hang-up)
        has its images not started closed undecoded."""
        future: asyncio.Future[list[Job]] = asyncio.get_running_loop().create_future()
        if not images:
            future.set_result([])
            return future
        request = _Request(decode_one, images, future)
        future.add_done_callback(partial(self._forget, request))
        self._waiting += len(images)
        self._new.append(request)
        self._start_more()
        return future

    def _start_more(self) -> None:
        loop = asyncio.get_running_loop()
        while self._running < self.threads and (self._new or self._ring):
            request = self._next()
            index, image = request.waiting.popleft()
            self._waiting -= 1
            try:
                task = loop.run_in_executor(self._executor, _timed, request.decode_one, image)
            except RuntimeError:  # the executor has shut down
                image.close()
                self._fail(request, _stopping())
                continue
            self._running += 1
            task.add_done_callback(partial(self._finished, request, index))

    def _next(self) -> _Request:
        """The new request whose first image is smallest, else the one at the ring's front."""
        if not self._new:
            return self._ring.popleft()
        request = min(self._new, key=_first_pixels)  # a few hundred requests at most: the budgets
        self._new.remove(request)
        return request

    def _finished(self, request: _Request, index: int, task: asyncio.Future[tuple[Job, float]]) -> None:
        self._running -= 1
        try:
            job, seconds = task.result()
        except asyncio.CancelledError:  # the executor shut down with the image not started
            self._fail(request, _stopping())
        except Exception as exc:  # the image's own error (BadImage), raised where the request awaits
            self._fail(request, exc)
        else:
            self._busy.inc(seconds)
            self._record(request, index, job, seconds)
        self._start_more()

    def _record(self, request: _Request, index: int, job: Job, seconds: float) -> None:
        request.jobs[index] = job
        request.seconds += seconds
        if request.future.done():
            return
        if not request.waiting:
            request.future.set_result([job for job in request.jobs if job is not None])
        elif request.seconds > self.budget_s:
            done = len(request.jobs) - len(request.waiting)
            self._fail(request, _over_budget(self.budget_s, done, len(request.jobs), request.seconds))
        else:
            self._ring.append(request)

    def _fail(self, request: _Request, error: BaseException) -> None:
        if not request.future.done():
            request.future.set_exception(error)
        self._drop_waiting(request)

    def _forget(self, request: _Request, future: asyncio.Future[list[Job]]) -> None:
        """The request is answered or gone (cancelled: its deadline, a hang-up)."""
        self._drop_waiting(request)

    def _drop_waiting(self, request: _Request) -> None:
        """None of the request's images waits any longer: those not started are closed."""
        if request.waiting:
            for line in (self._new, self._ring):
                if request in line:
                    line.remove(request)
            self._waiting -= request.close_waiting()


def _first_pixels(request: _Request) -> int:
    width, height = request.waiting[0][1].size
    return width * height


def _timed(decode_one: DecodeOne, image: Opened) -> tuple[Job, float]:
    """Runs in a decode thread: the job, and the seconds the thread spent on it."""
    started = time.monotonic()
    job = decode_one(image)
    return job, time.monotonic() - started


def _stopping() -> NotReady:
    return NotReady("the server is stopping; retry on another instance", headers={"Retry-After": "1"})


def _over_budget(budget_s: float, done: int, total: int, spent_s: float) -> TooLarge:
    return TooLarge(
        f"the request's images take more than {budget_s:g} s to decode "
        f"(server.max_decode_seconds_per_request): {done} of {total} took {spent_s:.1f} s; "
        "send fewer or smaller images, or baseline instead of progressive JPEGs"
    )
