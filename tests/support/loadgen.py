"""A small bounded client loop for real-server tests: a few threads, a request cap and a deadline.

Every loop ends by itself (count or time, whichever comes first) and the threads are joined
with a timeout, so a hung server fails the test instead of hanging it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.support.reference import class_probabilities, preprocess
from tests.support.waiting import wait_until as wait_until  # where real-server tests found it

PNG = {"Content-Type": "image/png"}
Send = Callable[[httpx.Client, int], httpx.Response]


def arrived_and_in_flight(url: str, model: str) -> tuple[float, float]:
    """(requests or calls that reached a door, of which still in flight) for ``model``, from
    the server's own metrics: an answered one is counted in ``requests_total``."""
    from prometheus_client.parser import text_string_to_metric_families

    in_flight = answered = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=2).text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name == "model_serve_in_flight_requests":
                in_flight = sample.value
            elif sample.name == "model_serve_requests_total":
                answered += sample.value
    return in_flight + answered, in_flight


def file_version(path: Path) -> str:
    """The contract's version string: the first 12 hex digits of the file's SHA-256."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def reference_scores(
    model: Any, images: Sequence[bytes], size: Sequence[int] = (16, 16), channels: int = 1
) -> list[list[float]]:
    """Per image, the class probabilities the contract's preprocessing and ``model`` give."""
    rows = []
    for image in images:
        x, _ = preprocess(image, size, channels, (0.5,), (0.5,))
        rows.append(class_probabilities(model, x).tolist())
    return rows


def matches(prediction: dict[str, Any], expected: Sequence[float], tolerance: float = 1e-5) -> bool:
    """Every top-k entry of one served prediction agrees with the reference probabilities."""
    return all(
        abs(entry["score"] - expected[entry["class_index"]]) <= tolerance for entry in prediction["top_k"]
    )


@dataclass
class Outcome:
    """One answer (or transport failure) of the load loop; ``index`` is what ``send`` got."""

    index: int
    status: int | None
    body: Any = None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class Load:
    """``threads`` clients calling ``send(client, i)`` until stopped, ``max_requests`` or ``max_s``."""

    send: Send
    threads: int = 4
    max_requests: int = 2000
    max_s: float = 30.0
    timeout_s: float = 10.0
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)
    _issued: int = 0

    def __enter__(self) -> Load:
        deadline = time.monotonic() + self.max_s
        for n in range(self.threads):
            worker = threading.Thread(target=self._loop, args=(deadline,), name=f"load-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(self.timeout_s + 5)
        stuck = [worker.name for worker in self._workers if worker.is_alive()]
        assert not stuck, f"load threads did not finish: {stuck}"

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def _next(self) -> int | None:
        with self._lock:
            if self._issued >= self.max_requests:
                return None
            self._issued += 1
            return self._issued - 1

    def _loop(self, deadline: float) -> None:
        with httpx.Client(timeout=self.timeout_s) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                index = self._next()
                if index is None:
                    return
                started = time.monotonic()
                try:
                    answer = self.send(client, index)
                    body = answer.json() if answer.headers.get("content-type") == "application/json" else None
                    outcome = Outcome(index, answer.status_code, body, seconds=time.monotonic() - started)
                except httpx.HTTPError as exc:
                    outcome = Outcome(index, None, error=repr(exc), seconds=time.monotonic() - started)
                with self._lock:
                    self.outcomes.append(outcome)
