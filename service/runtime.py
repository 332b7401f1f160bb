"""The objects one app instance serves with, created by ``create_app`` and found by handlers."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from service.budget import Budget
from service.config import ServeConfig
from service.errors import NotReady
from service.metrics import UNKNOWN_MODEL, Metrics, ModelMetrics
from service.registry import Registry


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

    def __post_init__(self) -> None:
        self.unknown_model_metrics = self.metrics.for_model(UNKNOWN_MODEL)
        self.body_budget = Budget(self.config.server.max_inflight_body_bytes, unit="body bytes")

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
