"""The registry owns each model's versions, replicas and batcher, and swaps versions atomically.

A version is pinned to a request when the request is queued (the batcher's tag), so a swap
never mixes versions inside one answer, and each answer reports the version that produced it.
New weights load *beside* the serving ones, are warmed up on every replica, and only then
become the active version; on any failure the old version keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.architecture import build_model
from service.batching import DynamicBatcher
from service.checkpoint import install, read_verified
from service.config import ModelSpec, ServeConfig
from service.decode import DecodedImage
from service.devices import CoreShare, available_cores, resolve_devices
from service.errors import CheckpointError, InferenceFailed, InvalidParameter, NotFound, ServeError
from service.metrics import Metrics, ModelMetrics
from service.postprocess import Job, Postprocess, classify, segment
from service.replica import DeviceModel, Replica
from service.watcher import watch_checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ModelVersion:
    """One loaded checkpoint: a copy of the weights on every device of the model."""

    version: str
    checkpoint: Path
    loaded_at: float
    load_seconds: float
    device_models: tuple[DeviceModel, ...]  # one per replica, in replica order


@dataclass(eq=False)
class ServedModel:
    """Everything that serves one configured model; the predict path only reads it."""

    name: str
    spec: ModelSpec
    batcher: DynamicBatcher[Job]
    replicas: list[Replica]
    metrics: ModelMetrics
    postprocess: Postprocess
    active: ModelVersion | None = None
    previous: ModelVersion | None = None
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def decodes_on_replicas(self) -> bool:
        """CPU replicas decode their own batches (see replica.py); GPU ones get decoded images."""
        return all(replica.device.type == "cpu" for replica in self.replicas)

    @property
    def devices(self) -> list[str]:
        return [replica.device_key for replica in self.replicas]

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
            "batching": self.spec.batching.model_dump(),
            "input": self.spec.input.model_dump(),
            "labels": list(self.spec.labels) if self.spec.labels else None,
            "loaded_at": _iso(active.loaded_at) if active else None,
            "ready": active is not None,
        }


class Registry:
    """All served models; created from the config, started and stopped by the app's lifespan."""

    def __init__(self, config: ServeConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.models: dict[str, ServedModel] = {}
        self.ready = False
        self._tasks: list[asyncio.Task[None]] = []

    def get(self, name: str | None) -> ServedModel:
        """The named model (the default one for ``None``); 404 when unknown."""
        key = name or self.config.default_model_name
        served = self.models.get(key)
        if served is None:
            raise NotFound(f"no model named {key!r}; loaded models: {sorted(self.models)}")
        return served

    async def start(self) -> None:
        """Builds replicas, loads and warms up every model, then starts serving."""
        for name, spec in self.config.models.items():
            self.models[name] = self._build(name, spec)
        for served in self.models.values():
            version = await self._load_and_warm(served, served.spec.checkpoint)
            self._activate(served, version)
            for replica in served.replicas:
                task = asyncio.create_task(
                    replica.serve(served.batcher, served.postprocess, served.metrics.observe_batch),
                    name=f"replica-{replica.model_name}-{replica.device_key}",
                )
                self._tasks.append(task)
            if served.spec.watch:
                self._tasks.append(asyncio.create_task(self._watch(served), name=f"watch-{served.name}"))
        self.ready = True
        self.metrics.ready.set(1)

    def _watch(self, served: ServedModel) -> Coroutine[Any, Any, None]:
        def current() -> str | None:
            return served.active.version if served.active else None

        async def reload(path: Path) -> object:
            return await self.reload(served.name, path)

        return watch_checkpoint(served.spec.checkpoint, current, reload, self.config.server.watch_interval_s)

    async def stop(self) -> None:
        """Cancels the replica loops (failing what they hold) and joins their threads."""
        self.ready = False
        self.metrics.ready.set(0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for served in self.models.values():
            for replica in served.replicas:
                await asyncio.to_thread(replica.close)

    async def reload(self, name: str, checkpoint: Path) -> tuple[str | None, str]:
        """Loads ``checkpoint`` beside the serving weights, checks it, swaps it in."""
        served = self.get(name)
        async with served.reload_lock:
            previous = served.active.version if served.active else None
            try:
                version = await self._load_and_warm(served, checkpoint)
            except ServeError:
                self.metrics.reloads.labels(name, "failure").inc()
                raise
            except Exception as exc:
                self.metrics.reloads.labels(name, "failure").inc()
                raise CheckpointError(f"{checkpoint.name} failed: {type(exc).__name__}: {exc}") from exc
            self._activate(served, version)
            self.metrics.reloads.labels(name, "success").inc()
            return previous, version.version

    async def rollback(self, name: str) -> tuple[str, str]:
        """Swaps the previous version back in (it stays in memory for this)."""
        served = self.get(name)
        async with served.reload_lock:
            if served.previous is None or served.active is None:
                raise InvalidParameter(f"model {name!r} has no previous version to roll back to")
            current = served.active
            self._activate(served, served.previous)
            self.metrics.reloads.labels(name, "rollback").inc()
            return current.version, served.active.version

    def _build(self, name: str, spec: ModelSpec) -> ServedModel:
        devices = resolve_devices(spec.devices, spec.cpu_replicas or available_cores())
        threads = spec.torch_threads or self.config.server.torch_threads
        cores = CoreShare(available_cores())
        size = spec.input.size
        replicas = [
            Replica(
                slot,
                name,
                device,
                input_shape=(size[0], size[1], spec.input.channels),
                max_batch_size=spec.batching.max_batch_size,
                threads=threads or cores,
            )
            for slot, device in enumerate(devices)
        ]
        batcher: DynamicBatcher[Job] = DynamicBatcher(
            max_batch_size=spec.batching.max_batch_size,
            max_delay_s=spec.batching.max_delay_s,
            max_queue_size=spec.batching.max_queue_size,
        )
        metrics = self.metrics.for_model(name)
        metrics.track_queue(lambda: batcher.depth)
        metrics.set_queue_capacity(spec.batching.max_queue_size)
        postprocess = classify if spec.task == "classification" else segment
        return ServedModel(name, spec, batcher, replicas, metrics, postprocess)

    async def _load_and_warm(self, served: ServedModel, checkpoint: Path) -> ModelVersion:
        started = time.monotonic()
        version = await asyncio.to_thread(_load_version, served.spec, checkpoint, served.replicas)
        jobs = _warm_up_jobs(served.spec)
        for replica in served.replicas:
            finite = await asyncio.wrap_future(replica.submit(version, jobs, _check_finite))
            if not all(finite):
                raise CheckpointError(
                    f"{checkpoint.name}: the warm-up forward on {replica.device_key} gave "
                    "non-finite outputs (NaN or inf); the weights are not served"
                )
        return ModelVersion(
            version.version,
            version.checkpoint,
            time.time(),
            time.monotonic() - started,
            version.device_models,
        )

    def _activate(self, served: ServedModel, version: ModelVersion) -> None:
        if served.active is not None and served.active is not version:
            served.previous = served.active
        served.active = version
        self.metrics.set_model_info(served.name, version.version, served.spec.architecture)
        self.metrics.load_duration.labels(served.name).set(version.load_seconds)
        log.info("model %s serving version %s from %s", served.name, version.version, version.checkpoint)


def _load_version(spec: ModelSpec, checkpoint: Path, replicas: Sequence[Replica]) -> ModelVersion:
    """Blocking: the file read once on the host, then a fresh copy of the architecture with
    its weights on every replica's device (one read and hash however many devices)."""
    started = time.monotonic()
    raw, version = read_verified(checkpoint, trust_pickle=spec.trust_pickle)
    device_models = []
    for replica in replicas:
        module = build_model(spec.architecture, spec.init_args)
        install(module, raw, replica.device)
        device_models.append(DeviceModel(module, spec, replica.device))
    return ModelVersion(version, checkpoint, time.time(), time.monotonic() - started, tuple(device_models))


def _warm_up_jobs(spec: ModelSpec) -> list[Job]:
    """A full batch of deterministic noise images, so the largest batch is known to fit."""
    height, width = spec.input.size
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.integers(0, 256, (height, width, spec.input.channels), dtype=np.uint8))
    image = DecodedImage(pixels, width, height)
    return [Job(image, 1)] * spec.batching.max_batch_size


def _check_finite(logits: torch.Tensor, jobs: Sequence[Job]) -> list[bool]:
    if not isinstance(logits, torch.Tensor):
        raise InferenceFailed("the model's output is not a tensor")
    return [bool(torch.isfinite(logits).all())] * len(jobs)


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
