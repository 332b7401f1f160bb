"""One served model's request path, shared by every door (``/predict``, v2 REST, v2 gRPC).

The stages are fixed when the model loads: ``prepare`` decodes a request's images where that
is cheapest (tiny ones together in the loop step's ``DecodeRound``, others in the ``DecodePool``)
into typed jobs, ``infer`` queues them on the model's one batcher pinned to a version, and the
model's ``Task`` postprocesses each batch on its replica. A door only parses its protocol and
renders the results.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from service.config import ModelSpec, ServerSpec
from service.errors import ModelUnloaded, NotFound, NotReady
from service.images.decode import Opened, is_tiny, open_image, prepare_image
from service.ops.metrics import ModelMetrics
from service.pipeline.batch_cap import BatchCost
from service.pipeline.batching import DynamicBatcher
from service.pipeline.budget import Budget
from service.pipeline.decode_pool import DecodePool
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
    decode_pool: DecodePool  # every model's images that are not tiny, taken in turn across requests
    pixel_budget: Budget  # decoded pixels held by all models' requests at once
    decode_round: DecodeRound  # tiny images of every model, decoded together per loop step
    cost: BatchCost | None = None  # the batch cap's measurements (batching.adaptive)
    active: ModelVersion | None = None
    previous: ModelVersion | None = None
    replicas_down: set[int] = field(default_factory=set)
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # load, unload, reload, rollback
    unloaded: bool = False  # by the repository extension's unload, until a load

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
        given) must name; 400 once unloaded, 503 while none is ready, 404 for any other version."""
        if self.unloaded:
            raise self.unloaded_error()
        active = self.active
        if active is None or not self.ready:
            raise NotReady(
                f"model {self.name!r} is not ready yet; retry shortly", headers={"Retry-After": "1"}
            )
        self.check_version(version)
        return active

    def unloaded_error(self) -> ModelUnloaded:
        """What a request for this model hears while it is unloaded: how to bring it back."""
        return ModelUnloaded(
            f"model {self.name!r} is unloaded; load it with POST /v2/repository/models/{self.name}/load"
        )

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
                jobs = await self.decode_pool.decode(partial(self._decode_one, wants=wants), opened)
        self.metrics.decode_duration.observe(time.monotonic() - started)
        self.metrics.images_per_request.observe(len(jobs))
        return jobs

    def _decode(self, images: list[Opened], wants: Wants) -> list[Job]:
        return [self._decode_one(image, wants) for image in images]

    def _decode_one(self, image: Opened, wants: Wants) -> Job:
        """Masks are answered at each image's own size, or at the model's when ``wants`` says."""
        decoded = prepare_image(image, self.spec.input)
        size = self.spec.input.size if wants.mask_at_input_size else (decoded.height, decoded.width)
        return Job(decoded.pixels, size, wants)

    def submit(self, jobs: Sequence[Job], version: ModelVersion) -> asyncio.Future[list[Any]]:
        """Queues the jobs on the model's one batcher; the future resolves to the task's result
        per job, in order. A future that is done early (cancelled, failed) drops its queued jobs."""
        return self.batcher.submit(jobs, tag=version)

    def describe(self) -> dict[str, Any]:
        """The public description served by ``GET /models``."""
        active = self.active
        return {
            "name": self.name,
            "task": self.task.name,
            "playground": asdict(self.task.playground),
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


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
