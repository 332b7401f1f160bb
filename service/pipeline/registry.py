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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from service.checkpoints.architecture import build_model
from service.checkpoints.loading import install, read_verified
from service.checkpoints.watcher import watch_checkpoint
from service.config import ModelSpec, ServeConfig
from service.errors import CheckpointError, ConfigError, InvalidParameter, NotFound, NotReady, ServeError
from service.ops.metrics import Metrics
from service.pipeline.batch_cap import BatchCost, bucket_sizes
from service.pipeline.batching import DynamicBatcher
from service.pipeline.budget import Budget
from service.pipeline.decode_pool import DecodePool
from service.pipeline.decode_round import DecodeRound
from service.pipeline.devices import CoreShare, available_cores, resolve_devices
from service.pipeline.fold import NotTraceable
from service.pipeline.replica import DeviceModel, ModelVersion, Replica
from service.pipeline.served import ServedModel
from service.pipeline.tasks import Job, task_for
from service.pipeline.warmup import warm_up

log = logging.getLogger(__name__)


class Registry:
    """All served models; created from the config, started and stopped by the app's lifespan."""

    def __init__(self, config: ServeConfig, metrics: Metrics, decode_pool: DecodePool) -> None:
        self.config = config
        self.metrics = metrics
        self.decode_pool = decode_pool
        self.decode_round = DecodeRound()
        self.pixel_budget = Budget(config.server.max_inflight_pixels, unit="decoded pixels")
        self.models: dict[str, ServedModel] = {}
        self.started = False
        self._tasks: list[asyncio.Task[None]] = []
        self._readiness_observers: list[Callable[[], None]] = []
        metrics.ready.set_function(lambda: float(self.ready))

    def on_readiness(self, observer: Callable[[], None]) -> None:
        """``observer`` is called on the event loop whenever readiness may have changed (a
        version activated, an unload, a replica loop down or back, start and stop), so that a
        door can push readiness to its clients (gRPC health's Watch) instead of polling it."""
        self._readiness_observers.append(observer)

    def readiness_changed(self) -> None:
        """Tells the observers; also called by whoever changes what readiness reads beside the
        registry (the lifecycle, when draining begins)."""
        for observer in self._readiness_observers:
            observer()

    @property
    def ready(self) -> bool:
        """Every model loaded, warm, and with all its replica loops running; a model unloaded
        on purpose does not count (as Triton: the other models still serve)."""
        return self.started and all(served.ready or served.unloaded for served in self.models.values())

    def get(self, name: str | None) -> ServedModel:
        """The named model (the default one for ``None``); 404 when unknown."""
        return self.named(name or self.config.default_model_name)

    def named(self, name: str) -> ServedModel:
        """The model called exactly ``name`` (the v2 protocol has no default model); 404 when unknown."""
        served = self.models.get(name)
        if served is None:
            raise NotFound(f"no model named {name!r}; loaded models: {sorted(self.models)}")
        return served

    async def start(self) -> None:
        """Builds replicas, loads and warms up every model, then starts serving."""
        for name, spec in self.config.models.items():
            self.models[name] = self._build(name, spec)
        for served in self.models.values():
            version = await self._load_and_warm(served, served.spec.checkpoint)
            assert version is not None  # nothing serves yet, so nothing to be unchanged from
            self._activate(served, version)
            for replica in served.replicas:
                self._keep_running(
                    f"replica-{served.name}-{replica.slot}-{replica.device_key}",
                    lambda served=served, replica=replica: replica.serve(  # type: ignore[misc]
                        served.batcher, served.task, served.metrics, served.cost
                    ),
                    down=served.replicas_down,
                    key=replica.slot,
                )
            if served.spec.watch:
                self._keep_running(f"watch-{served.name}", lambda served=served: self._watch(served))  # type: ignore[misc]
        self.started = True
        self.readiness_changed()

    def _keep_running(
        self, name: str, run: Callable[[], Awaitable[None]], *, down: set[int] | None = None, key: int = 0
    ) -> None:
        """A supervised background task: if ``run`` ever ends (it should not), it is logged,
        marked down in ``down`` (which readiness reads) and restarted after a pause."""
        task = asyncio.create_task(_supervise(name, run, down, key, self.readiness_changed), name=name)
        task.add_done_callback(_log_end)
        self._tasks.append(task)

    def _watch(self, served: ServedModel) -> Awaitable[None]:
        def current() -> str | None:
            return served.active.version if served.active else None

        async def reload(path: Path) -> object:
            if served.unloaded:  # only a load brings it back, from whichever file it names
                log.info("model %s is unloaded: changed checkpoint %s not loaded", served.name, path)
                return None
            return await self.reload(served.name, path)

        def refused() -> None:
            self.metrics.reloads.labels(served.name, "incomplete").inc()

        server = self.config.server
        return watch_checkpoint(
            served.spec.checkpoint,
            current,
            reload,
            server.watch_interval_s,
            quiet_s=server.watch_quiet_s,
            refused=refused,
        )

    def fail_queued(self, error: ServeError) -> int:
        """Fails every request still waiting in any model's queue (end of the drain grace)."""
        return sum(served.batcher.fail_queued(error) for served in self.models.values())

    async def stop(self) -> None:
        """Cancels the replica loops (failing what they hold) and joins their threads."""
        self.started = False
        self.readiness_changed()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for served in self.models.values():
            for replica in served.replicas:
                await asyncio.to_thread(replica.close)

    async def reload(self, name: str, checkpoint: Path) -> tuple[str | None, str, bool]:
        """Loads ``checkpoint`` beside the serving weights, checks it, swaps it in; the same
        content as the serving version changes nothing (the rollback target is kept). An
        unloaded model is refused: only a load brings it back."""
        served = self.get(name)
        async with served.reload_lock:
            if served.unloaded:
                raise served.unloaded_error()
            return await self._swap(served, checkpoint)

    async def load(self, name: str, checkpoint: Path) -> tuple[str | None, str, bool]:
        """The repository extension's load: a reload of a served model; an unloaded one is
        loaded and warmed on every replica first, then serves again (with no rollback target)."""
        served = self.get(name)
        async with served.reload_lock:
            if not served.unloaded:
                return await self._swap(served, checkpoint)
            version = await self._checked(served, checkpoint, unless=None)
            assert version is not None  # nothing serves, so nothing to be unchanged from
            served.unloaded = False
            self._activate(served, version)
            self.metrics.reloads.labels(name, "load").inc()
            return None, version.version, True

    async def unload(self, name: str) -> str | None:
        """Stops serving ``name``: new requests are refused, the ones already queued finish on
        their pinned version, and then nothing holds its weights. The version it served (None
        when it was already unloaded: nothing changes)."""
        served = self.get(name)
        async with served.reload_lock:
            if served.unloaded:
                return None
            if served.active is None:
                raise NotReady(f"model {name!r} is still loading; unload it once it serves")
            gone = served.active.version
            served.unloaded = True
            served.active = served.previous = None
            self.metrics.clear_model_info(name)
            self.metrics.reloads.labels(name, "unload").inc()
            log.info("model %s unloaded (was serving version %s)", name, gone)
            self.readiness_changed()
            return gone

    async def _swap(self, served: ServedModel, checkpoint: Path) -> tuple[str | None, str, bool]:
        """A reload, under the model's lock: (previous version, version, whether it changed)."""
        previous = served.active.version if served.active else None
        version = await self._checked(served, checkpoint, unless=previous)
        if version is None:
            self.metrics.reloads.labels(served.name, "unchanged").inc()
            assert previous is not None
            return previous, previous, False
        self._activate(served, version)
        self.metrics.reloads.labels(served.name, "success").inc()
        return previous, version.version, True

    async def _checked(
        self, served: ServedModel, checkpoint: Path, *, unless: str | None
    ) -> ModelVersion | None:
        """``_load_and_warm``, with a failure counted and its message naming the file as the
        client named it."""
        shown = _shown(checkpoint, self.config.checkpoint_root)
        try:
            return await self._load_and_warm(served, checkpoint, unless=unless)
        except CheckpointError as exc:
            self.metrics.reloads.labels(served.name, "failure").inc()
            raise CheckpointError(exc.message.replace(str(checkpoint), shown)) from exc
        except ServeError:
            self.metrics.reloads.labels(served.name, "failure").inc()
            raise
        except Exception as exc:
            self.metrics.reloads.labels(served.name, "failure").inc()
            raise CheckpointError(f"{shown} failed: {type(exc).__name__}: {exc}") from exc

    async def rollback(self, name: str) -> tuple[str, str]:
        """Swaps the previous version back in (it stays in memory for this)."""
        served = self.get(name)
        async with served.reload_lock:
            if served.unloaded:
                raise served.unloaded_error()
            if served.previous is None or served.active is None:
                raise InvalidParameter(f"model {name!r} has no previous version to roll back to")
            current = served.active
            self._activate(served, served.previous)
            self.metrics.reloads.labels(name, "rollback").inc()
            return current.version, served.active.version

    def _build(self, name: str, spec: ModelSpec) -> ServedModel:
        devices = resolve_devices(spec.devices, spec.cpu_replicas or available_cores())
        threads = spec.torch_threads or self.config.server.torch_threads
        if threads is None and spec.compile:
            # A compiled graph guards on torch's thread count: sharing the cores per batch
            # (alone: all, together: one each) would recompile it on every change.
            threads = max(1, available_cores() // len(devices))
        cores = CoreShare(available_cores(), len(devices))
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
        batcher: DynamicBatcher[Job, ModelVersion] = DynamicBatcher(
            max_batch_size=spec.batching.max_batch_size,
            max_delay_s=spec.batching.max_delay_s,
            max_queue_size=spec.batching.max_queue_size,
        )
        metrics = self.metrics.for_model(name)
        metrics.track_queue(lambda: batcher.depth)
        metrics.set_queue_capacity(spec.batching.max_queue_size)
        metrics.set_batch_cap(batcher.cap)

        def on_cap(cap: int, limit: int) -> None:
            batcher.limit_to(limit)
            metrics.set_batch_cap(cap)

        # a capped batch may take half the request deadline: one queued behind it still fits
        deadline_s = self.config.server.request_timeout_s / 2
        buckets = bucket_sizes(spec.batching.max_batch_size)
        cost = BatchCost(buckets, deadline_s, on_cap=on_cap) if spec.batching.adaptive else None
        return ServedModel(
            name,
            spec,
            task_for(spec),
            batcher,
            replicas,
            metrics,
            self.config.server,
            self.decode_pool,
            self.pixel_budget,
            self.decode_round,
            cost=cost,
        )

    async def _load_and_warm(
        self, served: ServedModel, checkpoint: Path, *, unless: str | None = None
    ) -> ModelVersion | None:
        """A new version, loaded and warm on every replica; ``None`` when its content is the
        version ``unless`` (nothing to do)."""
        started = time.monotonic()
        version = await asyncio.to_thread(
            _load_version, served.name, served.spec, checkpoint, served.replicas, unless
        )
        if version is None:
            return None
        results = await warm_up(served, version)
        return replace(
            version,
            loaded_at=time.time(),
            load_seconds=time.monotonic() - started,
            classes=served.task.classes(results[0]),
        )

    def _activate(self, served: ServedModel, version: ModelVersion) -> None:
        if served.active is not None and served.active is not version:
            served.previous = served.active
        served.active = version
        self.metrics.set_model_info(served.name, version.version, served.spec.architecture)
        self.metrics.load_duration.labels(served.name).set(version.load_seconds)
        log.info("model %s serving version %s from %s", served.name, version.version, version.checkpoint)
        self.readiness_changed()


# A task that dies at once again is retried with a doubling pause, up to the last figure.
RESTART_PAUSE_S = (0.1, 5.0)


async def _supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    down: set[int] | None,
    key: int,
    changed: Callable[[], None],
) -> None:
    pause_s, longest_s = RESTART_PAUSE_S
    while True:
        try:
            await run()
            log.error("background task %s ended on its own; restarting it", name)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # whatever ends it, it must not be lost
            log.error("background task %s died (%s); restarting it", name, type(exc).__name__, exc_info=exc)
        if down is not None:
            down.add(key)
            changed()
        await asyncio.sleep(pause_s)
        pause_s = min(pause_s * 2, longest_s)
        if down is not None:
            down.discard(key)
            changed()


def _log_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s stopped", task.get_name(), exc_info=task.exception())


def _load_version(
    name: str, spec: ModelSpec, checkpoint: Path, replicas: Sequence[Replica], unless: str | None
) -> ModelVersion | None:
    """Blocking: the file read once on the host, then a fresh copy of the architecture with
    its weights on every replica's device (one read and hash however many devices).

    On one torch thread: copying weights in parallel would leave this thread an OpenMP pool,
    which slows every forward of the replicas (see ``devices.wide_lane``)."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    started = time.monotonic()
    raw, version = read_verified(
        checkpoint, trust_pickle=spec.trust_pickle, state_dict_key=spec.state_dict_key
    )
    if version == unless:
        return None
    device_models = []
    for replica in replicas:
        module = build_model(spec.architecture, spec.init_args)
        install(module, raw, replica.device, architecture=spec.architecture)
        try:
            device_models.append(DeviceModel(module, spec, replica.device))
        except NotTraceable as exc:
            raise ConfigError(f"model {name!r}: fold_batchnorm needs a traceable model: {exc}") from exc
    return ModelVersion(version, checkpoint, time.time(), time.monotonic() - started, tuple(device_models))


def _shown(checkpoint: Path, root: Path) -> str:
    """How a reload's answer names its file: the path under ``checkpoint_root`` (the one a
    client sends), else the file's name; never the server's own absolute path."""
    return checkpoint.relative_to(root).as_posix() if checkpoint.is_relative_to(root) else checkpoint.name
