"""The admission budget: never waits, 413 for what can never fit, 503 when full, releases exactly once."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from service.config import ServerSpec, build_config
from service.errors import ConfigError, QueueFull, TooLarge
from service.pipeline.budget import Budget
from tests.support.waiting import await_until


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the server's event loop


def test_a_reservation_holds_its_units_until_the_block_ends() -> None:
    budget = Budget(100, unit="pixels")
    with budget.reserve(60) as held:
        assert budget.in_use == 60 and held.units == 60
    assert budget.in_use == 0


def test_units_are_released_after_an_exception() -> None:
    budget = Budget(100, unit="pixels")
    with pytest.raises(RuntimeError), budget.reserve(70):
        raise RuntimeError("decode failed")
    assert budget.in_use == 0
    with budget.reserve(100):  # the whole capacity is free again
        pass


def test_release_happens_exactly_once() -> None:
    budget = Budget(100, unit="pixels")
    first = budget.reserve(40)
    second = budget.reserve(30)
    first.release()
    first.release()
    with first:
        pass
    assert budget.in_use == 30
    second.release()
    assert budget.in_use == 0


def test_reservations_up_to_capacity_succeed_and_the_next_is_503() -> None:
    budget = Budget(100, unit="pixels", retry_after_s=2)
    held = [budget.reserve(25) for _ in range(4)]
    with pytest.raises(QueueFull) as full:
        budget.reserve(1)
    assert full.value.status == 503 and full.value.code == "queue_full"
    assert full.value.headers == {"Retry-After": "2"}
    assert "100 of 100 pixels" in full.value.message
    held.pop().release()
    budget.reserve(25)  # room again once one is released
    assert budget.in_use == 100


def test_one_reservation_over_capacity_is_413_even_when_idle() -> None:
    budget = Budget(100, unit="bytes")
    with pytest.raises(TooLarge, match=r"needs 101 bytes .* at most 100") as too_large:
        budget.reserve(101)
    assert too_large.value.status == 413
    assert budget.in_use == 0


def test_a_refused_reservation_holds_nothing() -> None:
    budget = Budget(10, unit="pixels")
    with budget.reserve(8), pytest.raises(QueueFull):
        budget.reserve(5)
    assert budget.in_use == 0


def test_bad_arguments_are_errors() -> None:
    with pytest.raises(ValueError, match="positive capacity"):
        Budget(0, unit="pixels")
    with pytest.raises(ValueError, match="negative"):
        Budget(10, unit="pixels").reserve(-1)


@pytest.mark.anyio
async def test_a_cancelled_request_releases_its_units() -> None:
    budget = Budget(100, unit="pixels")
    entered = asyncio.Event()

    async def request() -> None:
        with budget.reserve(80):
            entered.set()
            await asyncio.Event().wait()  # a prediction that never comes

    task = asyncio.create_task(request())
    await entered.wait()
    assert budget.in_use == 80
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert budget.in_use == 0


@pytest.mark.anyio
async def test_concurrent_requests_on_the_loop_share_the_capacity() -> None:
    budget = Budget(100, unit="pixels")
    gate = asyncio.Event()
    outcomes: list[str] = []

    async def request() -> None:
        try:
            with budget.reserve(30):
                outcomes.append("admitted")
                await gate.wait()
        except QueueFull:
            outcomes.append("refused")

    tasks = [asyncio.create_task(request()) for _ in range(5)]
    await await_until(lambda: len(outcomes) == 5, 5, "every task reaching its reservation")
    assert sorted(outcomes) == ["admitted"] * 3 + ["refused"] * 2
    gate.set()
    await asyncio.gather(*tasks)
    assert budget.in_use == 0


def test_releases_from_other_threads_are_counted_exactly() -> None:
    budget = Budget(1_000_000, unit="pixels")

    def churn() -> None:
        for _ in range(2000):
            budget.reserve(3).release()

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert budget.in_use == 0


def _raw() -> dict[str, object]:
    return {"models": {"m": {"architecture": "a:b", "checkpoint": "m.pt", "input": {"size": [8, 8]}}}}


def test_the_inflight_limits_have_defaults_that_fit_the_pod() -> None:
    spec = ServerSpec()
    assert spec.max_inflight_pixels == 100_000_000 >= spec.max_image_pixels
    assert spec.max_inflight_body_bytes == 256 * 1024 * 1024 >= spec.max_body_bytes
    assert spec.max_inflight_pixels * 12 + spec.max_inflight_body_bytes < 3 * 1024**3 / 2


def test_the_inflight_limits_read_their_environment_overrides(tmp_path: Path) -> None:
    environ = {
        "MODEL_SERVE_MAX_INFLIGHT_PIXELS": "60000000",
        "MODEL_SERVE_MAX_INFLIGHT_BODY_BYTES": "99999999",
    }
    server = build_config(_raw(), base_dir=tmp_path, environ=environ).server
    assert (server.max_inflight_pixels, server.max_inflight_body_bytes) == (60_000_000, 99_999_999)


@pytest.mark.parametrize(
    ("server", "key"),
    [
        ({"max_inflight_pixels": 1000}, "max_inflight_pixels"),
        ({"max_inflight_body_bytes": 4096}, "max_inflight_body_bytes"),
    ],
)
def test_an_inflight_limit_below_one_requests_limit_is_a_config_error(
    tmp_path: Path, server: dict[str, int], key: str
) -> None:
    with pytest.raises(ConfigError, match=key):
        build_config({**_raw(), "server": server}, base_dir=tmp_path)
