"""One served model's request path, shared by every door (``/predict``, v2 REST, v2 gRPC).

The stages are fixed when the model loads: ``prepare`` decodes a request's images where that
is cheapest (tiny ones together in the loop step's ``DecodeRound``, others in the worker pool)
into typed jobs, ``infer`` queues them on the model's one batcher pinned to a version, and the
model's ``Task`` postprocesses each batch on its replica. A door only parses its protocol and
renders the results.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from service.config import ModelSpec, ServerSpec
from service.errors import NotFound, NotReady, PredictionTimeout, ServeError, SlowUpload
from service.images.decode import Opened, is_tiny, open_image, prepare_image
from service.ops.metrics import ModelMetrics
from service.pipeline.batch_cap import BatchCost
from service.pipeline.batching import DynamicBatcher
from service.pipeline.budget import Budget
from service.pipeline.decode_round import DecodeRound
from service.pipeline.replica import ModelVersion, Replica
from service.pipeline.tasks import Job, Task, Wants


@dataclass(eq=False)
class ServedModel:
    """Everything that serves one configured model; the request path only reads it."""

    name: str
    spec: ModelSpec
    task: Task
    batcher: DynamicBatcher[Job, ModelVersion]
    replicas: list[Replica]
    metrics: ModelMetrics
    limits: ServerSpec
    workers: Executor
    pixel_budget: Budget  # decoded pixels held by all models' requests at once
    decode_round: DecodeRound  # tiny images of every model, decoded together per loop step
    cost: BatchCost | None = None  # the batch cap's measurements (batching.adaptive)
    active: ModelVersion | None = None
    previous: ModelVersion | None = None
    replicas_down: set[int] = field(default_factory=set)
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def ready(self) -> bool:
        """Loaded, warm, and every replica's loop running."""
        return self.active is not None and not self.replicas_down

    @property
    def batch_cap(self) -> int:
        """The most images one batch takes: the adaptive cap chosen last (a probe of the size
        above it is not a choice), else ``max_batch_size``."""
        return self.cost.cap if self.cost is not None else self.batcher.cap

    @property
    def devices(self) -> list[str]:
        return [replica.device_key for replica in self.replicas]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The model's input tensor per image: (C, H, W)."""
        height, width = self.spec.input.size
        return self.spec.input.channels, height, width

    def pin(self, version: str | None = None) -> ModelVersion:
        """The version a request will be answered by: the active one, which ``version`` (when
        given) must name; 503 while none is ready, 404 for any other version."""
        active = self.active
        if active is None or not self.ready:
            raise NotReady(
                f"model {self.name!r} is not ready yet; retry shortly", headers={"Retry-After": "1"}
            )
        self.check_version(version)
        return active

    def check_version(self, version: str | None) -> None:
        """404 when ``version`` is given and is not the one serving (nothing to check before
        the first version is loaded)."""
        active = self.active
        if version is not None and active is not None and version != active.version:
            raise NotFound(f"model {self.name!r} has no version {version!r}; it serves {active.version}")

    async def prepare(self, blobs: Sequence[bytes], wants: Wants) -> list[Job]:
        """Encoded images -> jobs at the model's input size (the header is checked first)."""
        started = time.monotonic()
        opened = [open_image(blob, max_pixels=self.limits.max_image_pixels) for blob in blobs]
        # Full-resolution pixels exist only while decoding, one image at a time (each is freed
        # once resized): the largest is held against the process-wide budget until then.
        with self.pixel_budget.reserve(max(image.size[0] * image.size[1] for image in opened)):
            if is_tiny(opened):  # cheaper than any thread hop
                jobs = await self.decode_round.decode(self._decode, opened, wants)
            else:
                loop = asyncio.get_running_loop()
                jobs = await loop.run_in_executor(self.workers, self._decode, opened, wants)
        self.metrics.decode_duration.observe(time.monotonic() - started)
        self.metrics.images_per_request.observe(len(jobs))
        return jobs

    def _decode(self, images: list[Opened], wants: Wants) -> list[Job]:
        """Masks are answered at each image's own size, or at the model's when ``wants`` says."""
        jobs = []
        for image in images:
            decoded = prepare_image(image, self.spec.input)
            size = self.spec.input.size if wants.mask_at_input_size else (decoded.height, decoded.width)
            jobs.append(Job(decoded.pixels, size, wants))
        return jobs

    def submit(self, jobs: Sequence[Job], version: ModelVersion) -> asyncio.Future[list[Any]]:
        """Queues the jobs on the model's one batcher; the future resolves to the task's result
        per job, in order. A future that is done early (cancelled, failed) drops its queued jobs."""
        return self.batcher.submit(jobs, tag=version)

    def describe(self) -> dict[str, Any]:
        """The public description served by ``GET /models``."""
        active = self.active
        return {
            "name": self.name,
            "task": self.spec.task,
            "version": active.version if active else None,
            "previous_version": self.previous.version if self.previous else None,
            "architecture": self.spec.architecture,
            "checkpoint": active.checkpoint.name if active else self.spec.checkpoint.name,
            "devices": self.devices,
            "replicas": [
                {"device": replica.device_key, "batches": replica.batches_served, "busy": replica.busy}
                for replica in self.replicas
            ],
            "batching": {**self.spec.batching.model_dump(), "cap": self.batch_cap},
            "precision": self.spec.precision,
            "channels_last": self.spec.channels_last,
            "fold_batchnorm": self.spec.fold_batchnorm,
            "compile": self.spec.compile,
            "input": self.spec.input.model_dump(),
            "labels": list(self.spec.labels) if self.spec.labels else None,
            "loaded_at": _iso(active.loaded_at) if active else None,
            "ready": self.ready,
        }


class Deadline:
    """One timer for a whole request (upload, decode, queue, forward); when it runs out the
    request's error says which phase it was in: 408 while uploading, else 504.

    ``async with deadline(limits) as timer``. A class, not a generator-based context manager:
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


def deadline(limits: ServerSpec, *, uploading: bool = True) -> Deadline:
    """The request's one deadline (see ``Deadline``); enter it with ``async with``."""
    return Deadline(limits, uploading=uploading)


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
        if answered.error is not None and answered.error.status != 500:
            metrics.rejected(answered.error.code)
        metrics.answered(answered.status, time.monotonic() - self._started)


@dataclass(slots=True)
class Answered:
    """What a door answered: its HTTP status (gRPC doors give the equivalent one)."""

    status: int = 500
    error: ServeError | None = None

    def failed(self, error: ServeError) -> None:
        self.status = error.status
        self.error = error


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
