"""A client that hangs up while its request waits for a batch: the request is dropped before
its forward (counted as ``client_closed_request``), and the server goes on answering.

On a real server through model-serve's protocol (its connection watch), and in-process
through the fallback that waits on ``receive()``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request

from service.doors.intake import departure_of
from tests.support.harness import model_entry, png, save_random_weights, write_config
from tests.support.loadgen import PNG
from tests.support.serving import ServerProcess

ARCH = "tests.support.archs:slow_classifier"
DELAY_S = 0.6
IMAGE = png(None, seed=3)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("gone")
    args = {"delay_s": DELAY_S}
    save_random_weights(ARCH, args, folder / "m.pt")
    entry = model_entry(
        ARCH, "m.pt", init_args=args, cpu_replicas=1, batching={"max_batch_size": 1, "adaptive": False}
    )
    with ServerProcess(write_config(folder, {"m": entry}), folder / "server.log") as process:
        yield process


def _batches(url: str) -> int:
    batches: int = httpx.get(f"{url}/models/m", timeout=5).json()["replicas"][0]["batches"]
    return batches


def _closed_requests(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "model_serve_rejected_requests_total" and sample.labels == {
                "model": "m",
                "reason": "client_closed_request",
            }:
                return sample.value
    return 0.0


def _post(url: str, answers: list[int]) -> None:
    answers.append(httpx.post(f"{url}/predict", content=IMAGE, headers=PNG, timeout=30).status_code)


def test_a_request_whose_client_hung_up_in_the_queue_never_runs(server: ServerProcess) -> None:
    batches, closed = _batches(server.url), _closed_requests(server.url)
    answers: list[int] = []
    first = threading.Thread(target=_post, args=(server.url, answers))
    first.start()
    time.sleep(DELAY_S / 4)  # the first request holds the only replica
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(IMAGE)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as gone:
        gone.sendall(head + IMAGE)
        time.sleep(DELAY_S / 4)  # decoded and queued behind the first
    first.join(timeout=30)
    _post(server.url, answers)  # and the server answers on
    assert answers == [200, 200]
    assert _batches(server.url) - batches == 2  # the hung-up request's image never ran
    assert _closed_requests(server.url) - closed == 1


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_without_a_connection_watch_a_task_waits_on_receive(anyio_backend: str) -> None:
    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"type": "http.disconnect"}

    request = Request({"type": "http", "method": "POST", "headers": [], "path": "/"}, receive)
    departure = departure_of(request)
    assert not departure.lost
    gone = asyncio.Event()
    departure.add(gone.set)
    await asyncio.wait_for(gone.wait(), timeout=5)
    assert departure.lost
