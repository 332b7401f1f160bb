"""The objects one app instance serves with, found by every door: config, registry, metrics,
worker threads, the admin token, the body budget, and whether the server is draining.

``service.lifecycle`` starts, drains and stops them; the doors only read them and ``admit``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from service.config import ServeConfig
from service.errors import NotReady
from service.ops.access import note_model
from service.ops.metrics import UNKNOWN_MODEL, Metrics, ModelMetrics
from service.pipeline.budget import Budget
from service.pipeline.registry import Registry
from service.pipeline.replica import ModelVersion
from service.pipeline.served import ServedModel


@dataclass(eq=False)
class Runtime:
    """Config, registry, metrics, and the decode threads (``workers``: the ``DecodePool``'s
    executor, nothing else runs there; shut down at stop)."""

    config: ServeConfig
    registry: Registry
    metrics: Metrics
    workers: ThreadPoolExecutor
    admin_token: str
    draining: bool = False
    startup_error: BaseException | None = None
    grpc_port: int | None = None  # the bound gRPC port, once listening
    body_budget: Budget = field(init=False)  # request body bytes held by all requests at once
    unknown_model_metrics: ModelMetrics = field(init=False)

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
