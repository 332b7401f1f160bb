"""Faulty models: whatever a forward raises or returns fails only its own batch, and a replica
loop that dies anyway is restarted while readiness says so."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from load_tests.server_process import ServerProcess
from service.pipeline import registry as registry_module
from service.pipeline.replica import Replica
from tests.support.harness import model_entry, png, save_random_weights, serving, write_config
from tests.support.waiting import await_until

pytestmark = pytest.mark.anyio
PNG = {"Content-Type": "image/png"}
WHITE, GREY = png(255), png(90)
KINDS = ["SystemExit", "KeyboardInterrupt", "GeneratorExit", "CancelledError", "Doomed"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _config(tmp_path: Path, architecture: str, **init_args: object) -> Path:
    args = {"in_channels": 1, "num_classes": 3, **init_args}
    save_random_weights(architecture, args, tmp_path / "m.pt")
    entry = model_entry(architecture, "m.pt", init_args=args, batching={"max_batch_size": 1})
    return write_config(tmp_path, {"m": entry})


@pytest.mark.parametrize("kind", KINDS)
async def test_a_base_exception_from_forward_fails_only_its_batch(tmp_path: Path, kind: str) -> None:
    config = _config(tmp_path, "tests.support.archs:raising_on_bright", kind=kind)
    async with serving(config) as (client, runtime):
        bad, good = await asyncio.gather(
            client.post("/predict", content=WHITE, headers=PNG),
            client.post("/predict", content=GREY, headers=PNG),
        )
        assert bad.status_code == 500 and bad.json()["error"]["code"] == "inference_failed", bad.text
        assert kind in bad.json()["error"]["message"] and "0x" not in bad.text
        assert good.status_code == 200, good.text
        again = await client.post("/predict", content=GREY, headers=PNG)  # the replica still serves
        assert again.status_code == 200 and (await client.get("/readyz")).status_code == 200
        failed = runtime.metrics.registry.get_sample_value(
            "model_serve_failed_batches_total", {"model": "m", "reason": "exception"}
        )
    assert failed == 1


async def test_non_finite_outputs_are_a_500_with_a_counter_not_a_null_score(tmp_path: Path) -> None:
    async with serving(_config(tmp_path, "tests.support.archs:non_finite_on_bright")) as (client, runtime):
        bad = await client.post("/predict", content=WHITE, headers=PNG)
        assert bad.status_code == 500, bad.text
        assert bad.json()["error"]["code"] == "non_finite_output"
        assert (await client.post("/predict", content=GREY, headers=PNG)).status_code == 200
        counted = runtime.metrics.registry.get_sample_value(
            "model_serve_failed_batches_total", {"model": "m", "reason": "non_finite_output"}
        )
    assert counted == 1


async def test_a_dead_replica_loop_is_restarted_and_readiness_is_honest_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "RESTART_PAUSE_S", (1.0, 1.0))
    crash = asyncio.Event()
    real_serve = Replica.serve
    calls = 0

    async def serve_then_die_once(self: Replica, *args: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await crash.wait()
            raise RuntimeError("a bug in the replica loop")
        await real_serve(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Replica, "serve", serve_then_die_once)
    config = _config(tmp_path, "tests.support.archs:failing_on_bright")
    async with serving(config) as (client, runtime):
        assert (await client.get("/readyz")).status_code == 200
        crash.set()
        await await_until(lambda: not runtime.registry.ready, 10, "readiness lost: the replica loop died")
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/models/m")).json()["ready"] is False
        assert runtime.metrics.registry.get_sample_value("model_serve_ready") == 0
        await await_until(lambda: runtime.registry.ready, 10, "readiness back after the restart")
        assert (await client.post("/predict", content=GREY, headers=PNG)).status_code == 200
        assert runtime.metrics.registry.get_sample_value("model_serve_ready") == 1


def test_system_exit_from_forward_does_not_end_the_process(tmp_path: Path) -> None:
    config = _config(tmp_path, "tests.support.archs:raising_on_bright", kind="SystemExit")
    with ServerProcess(config, tmp_path / "server.log") as server:
        server.wait_ready()
        for kind_body in (WHITE, WHITE):
            bad = httpx.post(f"{server.url}/predict", content=kind_body, headers=PNG, timeout=10)
            assert bad.status_code == 500, bad.text
        assert server.process.poll() is None
        good = httpx.post(f"{server.url}/predict", content=GREY, headers=PNG, timeout=10)
        assert good.status_code == 200, good.text
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
