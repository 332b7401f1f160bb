"""One request's way through a served model, the same on every door (``/predict``, v2 REST,
v2 gRPC); a door only parses its protocol into jobs and renders the results.

``async with Call(runtime, served, version, departure=...) as call``: the request is admitted
(503 while draining or not ready, 404 for a version not serving) and pinned to the active
version; one deadline runs from here to the answer (408 while uploading, else 504); the body's
bytes stay reserved on the process-wide budget until the answer; ``run`` queues the jobs and
waits, and a client that departs meanwhile (``Departure``) has its jobs dropped and gets
``ClientGone``. ``accounted`` wraps it all in the request's metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from service.config import ServerSpec
from service.errors import ClientGone, PredictionTimeout, ServeError, SlowUpload
from service.ops.metrics import ModelMetrics
from service.pipeline.runtime import Runtime
from service.pipeline.served import ServedModel
from service.pipeline.tasks import Job


class Departure(Protocol):
    """Tells that a request's client has gone: ``lost`` already, or a callback when it goes."""

    lost: bool

    def add(self, callback: Callable[[], None]) -> None: ...

    def discard(self, callback: Callable[[], None]) -> None: ...


class Call:
    """One request on one served model, from admission to its results (see the module docstring)."""

    __slots__ = ("_deadline", "_departure", "_held", "_started", "pinned", "runtime", "served")

    def __init__(
        self,
        runtime: Runtime,
        served: ServedModel,
        version: str | None = None,
        *,
        departure: Departure | None = None,
        uploading: bool = True,
    ) -> None:
        self.runtime = runtime
        self.served = served
        self.pinned = runtime.admit(served, version)
        self._started = time.monotonic()
        self._departure = departure
        self._deadline = Deadline(runtime.config.server, uploading=uploading)
        self._held = ExitStack()

    @property
    def limits(self) -> ServerSpec:
        return self.runtime.config.server

    def hold_body(self, size: int) -> None:
        """Reserves ``size`` body bytes on the process-wide budget until the answer (or 503)."""
        self._held.enter_context(self.runtime.body_budget.reserve(size))

    def uploaded(self) -> None:
        """The body has arrived: a deadline that passes from now on is the server's (504)."""
        self._deadline.uploaded()

    async def run(self, jobs: Sequence[Job]) -> list[Any]:
        """The task's result per job, in order, from the pinned version."""
        future = self.served.submit(jobs, self.pinned)
        departure = self._departure
        if departure is None:
            return await future
        if departure.lost:
            future.cancel()
            raise ClientGone("the client disconnected")

        def gone() -> None:
            if not future.done():  # the batcher drops queued jobs whose future is done
                future.set_exception(ClientGone("the client disconnected"))

        departure.add(gone)
        try:
            return await future
        finally:
            departure.discard(gone)

    async def __aenter__(self) -> Call:
        await self._deadline.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        """Ends the request: its outcome and duration count in the pinned version's statistics."""
        self._held.close()
        statistics = self.pinned.statistics
        try:
            await self._deadline.__aexit__(*exc_info)
        except BaseException:
            statistics.answered(False, time.monotonic() - self._started)
            raise
        statistics.answered(exc_info[0] is None, time.monotonic() - self._started)


class Deadline:
    """One timer for a whole request (upload, decode, queue, forward); when it runs out the
    request's error says which phase it was in: 408 while uploading, else 504.

    A class, not a generator-based context manager:
    every request enters one, and the generator machinery cost as much as the timer.
    """

    __slots__ = ("_timeout", "seconds", "uploading")

    def __init__(self, limits: ServerSpec, *, uploading: bool) -> None:
        self.seconds = limits.request_timeout_s
        self.uploading = uploading
        self._timeout = asyncio.timeout(self.seconds)

    def uploaded(self) -> None:
        self.uploading = False

    async def __aenter__(self) -> Deadline:
        await self._timeout.__aenter__()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        try:
            await self._timeout.__aexit__(kind, error, trace)
        except TimeoutError:
            if self.uploading:
                raise SlowUpload(f"the body did not arrive within {self.seconds:g} s") from None
            raise PredictionTimeout(
                f"no prediction within {self.seconds:g} s; the server is overloaded, retry later"
            ) from None


def accounted(metrics: ModelMetrics) -> Accounting:
    """``with accounted(metrics) as answer``: one request's metrics (see ``Accounting``)."""
    return Accounting(metrics)


class Accounting:
    """One request's metrics, the same for every door: in flight while it runs, then its
    answer's status (``Answered.status``, set by the door) and duration; refusals by reason.
    A class for the reason ``Deadline`` is one."""

    __slots__ = ("_answered", "_metrics", "_started")

    def __init__(self, metrics: ModelMetrics) -> None:
        self._metrics = metrics
        self._answered = Answered()

    def __enter__(self) -> Answered:
        self._started = time.monotonic()
        self._metrics.in_flight.inc()
        return self._answered

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        metrics, answered = self._metrics, self._answered
        metrics.in_flight.dec()
        if answered.refusal is not None:
            metrics.rejected(answered.refusal)
        metrics.answered(answered.status, time.monotonic() - self._started)


@dataclass(slots=True)
class Answered:
    """What a door answered: its HTTP status (gRPC doors give the equivalent one), and the
    error code of a refusal (any error but a 500), counted by reason.

    Only the code is kept, never the error: a caught exception's traceback holds every frame
    it passed, and the door's frame holds this object, so keeping the error made a reference
    cycle that kept each refused request's body (20 MB uploads) alive until the cyclic
    garbage collector's rare full pass: RSS climbed by about 300 MB a wave of uploads.
    """

    status: int = 500
    refusal: str | None = None

    def failed(self, error: ServeError) -> None:
        self.status = error.status
        self.refusal = error.code if error.status != 500 else None
