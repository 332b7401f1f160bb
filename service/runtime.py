"""The objects one app instance serves with, created by ``create_app`` and found by handlers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from service.config import ServeConfig
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
    unknown_model_metrics: ModelMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.unknown_model_metrics = self.metrics.for_model(UNKNOWN_MODEL)
