"""Prometheus metrics: every family defined once, against one registry per app.

Labels are bounded: ``model`` is a configured model name (or ``_unknown``), ``code`` an HTTP
status, ``device`` a configured device, ``reason`` one of the error codes in ``errors.py``.
Hot-path children are resolved once per model so a request pays for an increment, not a
label lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "model_serve_"
UNKNOWN_MODEL = "_unknown"
# "load" and "unload": the repository extension bringing an unloaded model back, unloading one
RELOAD_OUTCOMES = ("success", "unchanged", "failure", "incomplete", "rollback", "load", "unload")
FAILED_BATCH_REASONS = ("exception", "non_finite_output")  # others appear when they happen

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """The service's metric families; create one per app (registering twice raises)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.requests = self._counter(
            "requests", "Requests answered, by model and HTTP status.", ["model", "code"]
        )
        self.request_duration = self._seconds(
            "request_duration_seconds", "Time from request start to answer.", ["model"]
        )
        self.batch_size = self._histogram(
            "batch_size", "Images per forward.", ["model"], buckets=_BATCH_BUCKETS
        )
        self.batch_cap = self._gauge(
            "batch_cap",
            "The most images one batch takes now: the measured best size (batching.adaptive), "
            "at most batching.max_batch_size.",
            ["model"],
        )
        self.queue_depth = self._gauge("queue_depth", "Images waiting for a replica.", ["model"])
        self.queue_capacity = self._gauge(
            "queue_capacity",
            "Images the queue holds before answering 503 queue_full (batching.max_queue_size).",
            ["model"],
        )
        self.in_flight = self._gauge("in_flight_requests", "Predict requests being handled.", ["model"])
        self.inference_duration = self._seconds(
            "inference_duration_seconds", "Forward plus postprocess time of one batch.", ["model", "device"]
        )
        self.queue_wait = self._seconds(
            "queue_wait_seconds", "Time a batch's oldest image waited for a replica.", ["model"]
        )
        self.decode_duration = self._seconds(
            "decode_duration_seconds",
            "Time to open and decode one request's images (inline when tiny, else on the decode threads).",
            ["model"],
        )
        self.decode_waiting = self._gauge(
            "decode_queue_images",
            "Images of every model's requests waiting for a decode thread (tiny ones are decoded "
            "on the event loop and never wait here).",
        )
        self.decode_busy = self._counter(
            "decode_busy_seconds",
            "Seconds the decode threads spent decoding; its rate over decode_threads is the "
            "pool's busy fraction.",
        )
        self.decode_threads = self._gauge("decode_threads", "Threads that decode requests' images.")
        self.evicted_connections = self._counter(
            "evicted_connections",
            "Connections closed while waiting for a request head, to make room for a new one past "
            "server.max_connections.",
        )
        self.images_per_request = self._histogram(
            "images_per_request", "Images in one predict request.", ["model"], buckets=_BATCH_BUCKETS
        )
        self.rejected = self._counter(
            "rejected_requests", "Requests refused before inference, by reason.", ["model", "reason"]
        )
        self.failed_batches = self._counter(
            "failed_batches",
            "Batches whose forward or postprocess failed (their requests answered 5xx), by reason.",
            ["model", "reason"],
        )
        self.model_info = self._gauge(
            "model_info", "The version serving each model (value 1).", ["model", "version", "architecture"]
        )
        self.reloads = self._counter(
            "reloads", "Hot reloads, rollbacks, loads and unloads, by outcome.", ["model", "outcome"]
        )
        self.load_duration = self._gauge(
            "model_load_duration_seconds", "How long the serving version took to load and warm up.", ["model"]
        )
        self.ready = self._gauge("ready", "1 when every model is loaded and warm, else 0.")
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(DeviceMemoryCollector())

    def _counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(PREFIX + name, documentation, labels, registry=self.registry)

    def _gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(PREFIX + name, documentation, labels, registry=self.registry)

    def _seconds(self, name: str, documentation: str, labels: Sequence[str]) -> Histogram:
        return self._histogram(name, documentation, labels, buckets=_LATENCY_BUCKETS)

    def _histogram(
        self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> Histogram:
        return Histogram(PREFIX + name, documentation, labels, buckets=buckets, registry=self.registry)

    def render(self) -> bytes:
        """The exposition text of every family."""
        return generate_latest(self.registry)

    def for_model(self, name: str) -> ModelMetrics:
        """Children for one configured model, resolved once."""
        return ModelMetrics(self, name)

    def set_model_info(self, model: str, version: str, architecture: str) -> None:
        """Exactly one info series per model: the version serving now."""
        self.clear_model_info(model)
        self.model_info.labels(model, version, architecture).set(1)

    def clear_model_info(self, model: str) -> None:
        """No info series for ``model``: it serves no version (unloaded)."""
        for labels in list(_label_sets(self.model_info)):
            if labels[0] == model:
                self.model_info.remove(*labels)


class ModelMetrics:
    """One model's pre-resolved children; what the predict path and replicas touch."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._metrics = metrics
        self.model = model
        self._codes: dict[int, Counter] = {}
        self.request_duration = metrics.request_duration.labels(model)
        self.batch_size = metrics.batch_size.labels(model)
        self.queue_wait = metrics.queue_wait.labels(model)
        self.decode_duration = metrics.decode_duration.labels(model)
        self.images_per_request = metrics.images_per_request.labels(model)
        self.in_flight = metrics.in_flight.labels(model)
        self._inference: dict[str, Histogram] = {}
        # Every outcome exported at 0 from the start: increase() cannot see a counter's first
        # step when its series is born at 1, so the first failed reload would never alert.
        # (Not for the stand-in of unknown names: it is never reloaded.)
        if model != UNKNOWN_MODEL:
            for outcome in RELOAD_OUTCOMES:
                metrics.reloads.labels(model, outcome)
            for reason in FAILED_BATCH_REASONS:
                metrics.failed_batches.labels(model, reason)

    def answered(self, code: int, duration_s: float) -> None:
        counter = self._codes.get(code)
        if counter is None:
            counter = self._codes[code] = self._metrics.requests.labels(self.model, str(code))
        counter.inc()
        self.request_duration.observe(duration_s)

    def rejected(self, reason: str) -> None:
        self._metrics.rejected.labels(self.model, reason).inc()

    def failed_batch(self, reason: str) -> None:
        self._metrics.failed_batches.labels(self.model, reason).inc()

    def observe_batch(self, device: str, size: int, wait_s: float, compute_s: float) -> None:
        histogram = self._inference.get(device)
        if histogram is None:
            histogram = self._inference[device] = self._metrics.inference_duration.labels(self.model, device)
        histogram.observe(compute_s)
        self.batch_size.observe(size)
        self.queue_wait.observe(max(wait_s, 0.0))

    def track_queue(self, depth: Callable[[], float]) -> None:
        self._metrics.queue_depth.labels(self.model).set_function(depth)

    def set_batch_cap(self, images: int) -> None:
        self._metrics.batch_cap.labels(self.model).set(images)

    def set_queue_capacity(self, images: int) -> None:
        """The queue's bound, exported beside its depth so alerts can compare the two."""
        self._metrics.queue_capacity.labels(self.model).set(images)


class DeviceMemoryCollector(Collector):
    """Per-GPU memory read at scrape time (nothing when CUDA is absent)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if not torch.cuda.is_available():
            return
        allocated = GaugeMetricFamily(
            f"{PREFIX}device_memory_bytes", "GPU memory allocated by tensors.", labels=["device"]
        )
        reserved = GaugeMetricFamily(
            f"{PREFIX}device_memory_reserved_bytes",
            "GPU memory reserved by the caching allocator.",
            labels=["device"],
        )
        for index in range(torch.cuda.device_count()):
            device = f"cuda:{index}"
            allocated.add_metric([device], float(torch.cuda.memory_allocated(index)))
            reserved.add_metric([device], float(torch.cuda.memory_reserved(index)))
        yield allocated
        yield reserved
        yield from _utilization()

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


def _utilization() -> Iterator[GaugeMetricFamily]:
    """GPU utilisation through NVML, when the driver library is there."""
    family = GaugeMetricFamily(
        f"{PREFIX}device_utilization_ratio",
        "GPU busy fraction over the last sample period (NVML).",
        labels=["device"],
    )
    try:
        for index in range(torch.cuda.device_count()):
            family.add_metric([f"cuda:{index}"], torch.cuda.utilization(index) / 100.0)
    except Exception:  # NVML missing or not permitted: skip the family, keep the scrape
        return
    yield family


def _label_sets(metric: Gauge) -> Iterator[tuple[str, ...]]:
    for sample_family in metric.collect():
        for sample in sample_family.samples:
            yield tuple(sample.labels[name] for name in ("model", "version", "architecture"))
