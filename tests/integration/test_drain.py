"""SIGTERM during load: in-flight requests finish, new ones are refused, the process exits 0."""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.harness import model_entry, png, save_random_weights, serving, write_config
from tests.support.loadgen import PNG, arrived_and_in_flight, wait_until
from tests.support.serving import ServerProcess

ARCH = "tests.support.archs:slow_classifier"
DELAY_S = 0.3
GRACE_S = 10.0


def _config(folder: Path, grace_s: float = GRACE_S) -> Path:
    args = {"delay_s": DELAY_S}
    save_random_weights(ARCH, args, folder / "s.pt")
    entry = model_entry(ARCH, "s.pt", init_args=args, batching={"max_batch_size": 1})
    return write_config(folder, {"slow": entry}, server={"drain_grace_s": grace_s})


def _send_at_once(url: str, count: int, timeout_s: float) -> tuple[list[threading.Thread], list[int | str]]:
    """``count`` predictions from threads whose clients are ready before any of them sends."""
    results: list[int | str] = ["not answered"] * count
    clients = [httpx.Client(timeout=timeout_s) for _ in range(count)]  # TLS setup is slow: do it first
    barrier = threading.Barrier(count)

    def call(i: int) -> None:
        with clients[i] as client:
            barrier.wait(10)
            try:
                results[i] = client.post(f"{url}/predict", content=png(i * 20), headers=PNG).status_code
            except httpx.HTTPError as exc:
                results[i] = type(exc).__name__

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads, results


def _wait_in_flight(url: str, count: int, at_least: int) -> None:
    def ready() -> bool:
        arrived, in_flight = arrived_and_in_flight(url, "slow")
        assert arrived < count or in_flight >= at_least, "the requests finished before the signal"
        return arrived >= count

    wait_until(ready, 10, f"{count} requests sent, {at_least} of them in flight")


def test_sigterm_drains_in_flight_requests_and_exits_zero(tmp_path: Path) -> None:
    server = ServerProcess(_config(tmp_path), tmp_path / "server.log")
    with server:
        threads, results = _send_at_once(server.url, 6, GRACE_S + 5)
        _wait_in_flight(server.url, 6, at_least=4)
        signalled = time.monotonic()
        server.terminate()
        wait_until(lambda: "draining" in server.log(), 5, "the server logs that it drains")

        late: list[int | str] = []
        for _ in range(3):  # new connections after the signal: refused, closed unanswered, or 503
            try:
                answer = httpx.post(f"{server.url}/predict", content=png(1), headers=PNG, timeout=5)
                late.append(answer.status_code)
            except httpx.TransportError as exc:
                late.append(type(exc).__name__)
        for thread in threads:
            thread.join(GRACE_S + 10)
        code = server.process.wait(GRACE_S + 5)
        exited_after_s = time.monotonic() - signalled

    assert results == [200] * 6, f"in-flight requests were cut off: {results}"
    refused = ("ConnectError", "RemoteProtocolError", "ReadError", "WriteError")
    assert all(answer == 503 or answer in refused for answer in late), late
    print(f"after SIGTERM: {late}, exited after {exited_after_s:.2f} s")
    assert exited_after_s < GRACE_S
    assert code == 0, f"exit status {code} after a graceful drain:\n{server.log()[-2000:]}"


@dataclass
class CutShort:
    """A drain whose in-flight work outlasts the grace period: what each client got."""

    results: list[int | str]
    exited_after_s: float
    code: int | None


@pytest.fixture(scope="module")
def cut_short(tmp_path_factory: pytest.TempPathFactory) -> CutShort:
    folder = tmp_path_factory.mktemp("grace")
    server = ServerProcess(_config(folder, grace_s=1.0), folder / "server.log")
    with server:
        threads, results = _send_at_once(server.url, 12, 15)  # 3.6 s of work
        _wait_in_flight(server.url, 12, at_least=8)
        signalled = time.monotonic()
        server.terminate()
        try:
            code: int | None = server.process.wait(10)
        except subprocess.TimeoutExpired:
            code = None
        exited_after_s = time.monotonic() - signalled
        for thread in threads:
            thread.join(10)
    return CutShort(results, exited_after_s, code)


def test_drain_stops_at_the_grace_period(cut_short: CutShort) -> None:
    """Work that cannot finish in time is abandoned: the process still exits within the grace."""
    assert cut_short.code is not None, "the server did not exit after the grace period"
    print(f"cut short: {cut_short.results}, exited after {cut_short.exited_after_s:.2f} s")
    assert cut_short.exited_after_s < 1.0 + 2 * DELAY_S + 1.5, cut_short.exited_after_s
    assert "not answered" not in cut_short.results, "a client hung after the server exited"
    assert cut_short.results.count(200) >= 2, cut_short.results


def test_requests_cut_at_the_grace_period_get_503(cut_short: CutShort) -> None:
    assert all(r in (200, 503) for r in cut_short.results), cut_short.results


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_readiness_is_503_while_draining(tmp_path: Path) -> None:
    async with serving(_config(tmp_path)) as (client, runtime):
        assert (await client.get("/readyz")).status_code == 200
        runtime.draining = True
        ready = await client.get("/readyz")
        alive = await client.get("/healthz")
        predict = await client.post("/predict", content=png(3), headers=PNG)
    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "not_ready"
    assert "draining" in ready.json()["error"]["message"]
    assert alive.status_code == 200, "liveness must not fail while draining: it would restart the pod"
    assert predict.status_code == 503
    assert predict.json()["error"]["code"] == "not_ready"
    assert int(predict.headers["retry-after"]) >= 1
