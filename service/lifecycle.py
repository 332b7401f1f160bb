"""The objects one app instance serves with, created by ``create_app`` and found by handlers,
and its life: start, admission of each request, drain on a signal, and the one stop sequence."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from service.config import ServeConfig
from service.doors.v2.grpc_service import start_grpc, stop_grpc
from service.errors import NotReady
from service.ops.access import note_model
from service.ops.metrics import UNKNOWN_MODEL, Metrics, ModelMetrics
from service.pipeline.budget import Budget
from service.pipeline.registry import Registry
from service.pipeline.replica import ModelVersion
from service.pipeline.served import ServedModel

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Runtime:
    """Config, registry, metrics and the worker pool for decode and PNG encode."""

    config: ServeConfig
    registry: Registry
    metrics: Metrics
    workers: ThreadPoolExecutor
    admin_token: str
    draining: bool = False
    startup_error: BaseException | None = None
    loop: asyncio.AbstractEventLoop | None = None
    grpc_port: int | None = None  # the bound gRPC port, once listening
    body_budget: Budget = field(init=False)  # request body bytes held by all requests at once
    unknown_model_metrics: ModelMetrics = field(init=False)
    _grpc: grpc.aio.Server | None = field(default=None, init=False)
    _loading: asyncio.Task[None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.unknown_model_metrics = self.metrics.for_model(UNKNOWN_MODEL)
        self.body_budget = Budget(self.config.server.max_inflight_body_bytes, unit="body bytes")

    def admit(self, served: ServedModel, version: str | None = None) -> ModelVersion:
        """The version a new request will be answered by (noted for its access line): 503 while
        draining or not ready, 404 for a version that is not the one serving."""
        if self.draining:
            raise NotReady(
                "the server is draining before shutdown; retry on another instance",
                headers={"Retry-After": "1"},
            )
        pinned = served.pin(version)
        note_model(served.name, pinned.version)
        return pinned

    async def start(self, *, grpc_host: str, after_load: Callable[[asyncio.Task[None]], None]) -> None:
        """Listens for gRPC (unless ``server.grpc_port`` is null), then loads the models in the
        background; ``after_load`` gets the loading task once it ends."""
        self.loop = asyncio.get_running_loop()
        port = self.config.server.grpc_port
        if port is not None:
            self._grpc, self.grpc_port = await start_grpc(self, grpc_host, port)
        names = list(self.config.models)
        log.info("loading %d model%s (%s)...", len(names), "" if len(names) == 1 else "s", ", ".join(names))
        self._loading = asyncio.create_task(self.registry.start(), name="load-models")
        self._loading.add_done_callback(after_load)

    async def stop(self) -> None:
        """The one shutdown sequence, after the HTTP server has drained: refuse new work, answer
        the gRPC calls in flight while the replicas still run, stop loading, stop the replicas
        (failing what they hold), release the worker threads."""
        self.draining = True
        if self._grpc is not None:
            await stop_grpc(self._grpc, self.config.server.drain_grace_s)
        if self._loading is not None:
            self._loading.cancel()
            await asyncio.gather(self._loading, return_exceptions=True)
        await self.registry.stop()
        self.workers.shutdown(wait=False, cancel_futures=True)

    def begin_drain(self) -> None:
        """Readiness turns 503 now; whatever is still waiting when the grace period ends is
        answered 503 (retry elsewhere) instead of being cut off. Safe from a signal handler."""
        self.draining = True
        if self.loop is not None:
            self.loop.call_soon_threadsafe(
                self.loop.call_later, self.config.server.drain_grace_s, self._give_up
            )

    def _give_up(self) -> None:
        error = NotReady(
            "the server shut down before this prediction was ready; retry", headers={"Retry-After": "1"}
        )
        self.registry.fail_queued(error)
