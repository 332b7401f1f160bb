"""GET /metrics: every contract family, counters that move by the right amounts, promtool's lint.

In-process (ASGI) against a tiny slow model, so batching and queueing are observable.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from service.pipeline.runtime import Runtime
from tests.support.harness import ADMIN, model_entry, png, save_random_weights, serving, write_config
from tests.support.loadgen import PNG, file_version

pytestmark = pytest.mark.anyio
ARCH = "tests.support.archs:slow_classifier"
ARGS = {"delay_s": 0.05}

CONTRACT = {
    # family name (as the parser names it): (type, label names of its samples)
    "model_serve_requests": ("counter", {"model", "code"}),
    "model_serve_request_duration_seconds": ("histogram", {"model"}),
    "model_serve_batch_size": ("histogram", {"model"}),
    "model_serve_queue_depth": ("gauge", {"model"}),
    "model_serve_inference_duration_seconds": ("histogram", {"model", "device"}),
    "model_serve_model_info": ("gauge", {"model", "version", "architecture"}),
    "model_serve_reloads": ("counter", {"model", "outcome"}),
}
EXTRAS = {
    "model_serve_queue_wait_seconds": ("histogram", {"model"}),
    "model_serve_in_flight_requests": ("gauge", {"model"}),
    "model_serve_rejected_requests": ("counter", {"model", "reason"}),
    "model_serve_decode_duration_seconds": ("histogram", {"model"}),
    "model_serve_images_per_request": ("histogram", {"model"}),
    "model_serve_model_load_duration_seconds": ("gauge", {"model"}),
    "model_serve_ready": ("gauge", set()),
    "process_resident_memory_bytes": ("gauge", set()),
    "process_cpu_seconds": ("counter", set()),
    "process_open_fds": ("gauge", set()),
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Scrape:
    """One parsed exposition; ``value`` sums the samples that carry the given labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {family.name: family for family in text_string_to_metric_families(text)}

    def samples(self, name: str) -> list[Sample]:
        return [s for family in self.families.values() for s in family.samples if s.name == name]

    def value(self, name: str, **labels: str) -> float:
        found = [s for s in self.samples(name) if all(s.labels.get(k) == v for k, v in labels.items())]
        return float(sum(s.value for s in found))


async def _scrape(client: httpx.AsyncClient) -> Scrape:
    answer = await client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return Scrape(answer.text)


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime, Path]]:
    save_random_weights(ARCH, ARGS, tmp_path / "a.pt", seed=1)
    save_random_weights(ARCH, ARGS, tmp_path / "b.pt", seed=2)
    models = {
        "m": model_entry(ARCH, "a.pt", init_args=ARGS, batching={"max_batch_size": 8}),
        "other": model_entry(ARCH, "a.pt", init_args=ARGS, batching={"max_batch_size": 1}),
    }
    async with serving(write_config(tmp_path, models)) as (client, runtime):
        yield client, runtime, tmp_path


async def test_every_family_is_exposed_with_its_labels(app: tuple[httpx.AsyncClient, Runtime, Path]) -> None:
    client, _, _ = app
    assert (await client.post("/predict?model=m", content=png(1), headers=PNG)).status_code == 200
    assert (
        await client.post("/predict?model=m", content=b"x", headers={"Content-Type": "text/plain"})
    ).status_code == 415
    assert (await client.post("/models/m/reload", headers=ADMIN)).status_code == 200
    scrape = await _scrape(client)
    for name, (kind, labels) in {**CONTRACT, **EXTRAS}.items():
        family = scrape.families.get(name)
        assert family is not None, f"{name} is missing"
        assert family.type == kind, (name, family.type)
        assert family.samples, f"{name} has no samples"
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)
    assert scrape.value("model_serve_ready") == 1
    assert scrape.value("model_serve_inference_duration_seconds_count", model="m", device="cpu") >= 1
    assert scrape.value("model_serve_model_load_duration_seconds", model="m") > 0
    assert scrape.value("process_resident_memory_bytes") > 10e6


async def test_counters_move_by_the_right_amounts(app: tuple[httpx.AsyncClient, Runtime, Path]) -> None:
    client, _, _ = app
    before = await _scrape(client)
    for value in range(5):
        assert (
            await client.post("/predict?model=m", content=png(value * 40), headers=PNG)
        ).status_code == 200
    files = [("file", (f"{i}.png", png(i), "image/png")) for i in range(3)]
    assert (await client.post("/predict?model=m", files=files)).status_code == 200
    assert (
        await client.post("/predict?model=m", content=png(1), headers={"Content-Type": "text/csv"})
    ).status_code == 415
    assert (await client.post("/predict?model=m", content=b"junk", headers=PNG)).status_code == 400
    assert (await client.post("/predict?model=m&top_k=0", content=png(1), headers=PNG)).status_code == 422
    assert (await client.post("/predict?model=nope-123", content=png(1), headers=PNG)).status_code == 404
    after = await _scrape(client)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("model_serve_requests_total", model="m", code="200") == 6
    assert delta("model_serve_requests_total", model="m", code="415") == 1
    assert delta("model_serve_requests_total", model="m", code="400") == 1
    assert delta("model_serve_requests_total", model="m", code="422") == 1
    assert delta("model_serve_requests_total", model="m") == 9
    assert delta("model_serve_request_duration_seconds_count", model="m") == 9
    assert delta("model_serve_rejected_requests_total", model="m", reason="unsupported_media_type") == 1
    assert delta("model_serve_rejected_requests_total", model="m", reason="bad_image") == 1
    assert delta("model_serve_rejected_requests_total", model="m", reason="invalid_parameter") == 1
    assert delta("model_serve_images_per_request_sum", model="m") == 5 + 3
    assert delta("model_serve_images_per_request_count", model="m") == 6
    assert delta("model_serve_decode_duration_seconds_count", model="m") == 6
    assert delta("model_serve_batch_size_sum", model="m") == 8, "every image served is in exactly one batch"
    batches = delta("model_serve_batch_size_count", model="m")
    assert 6 <= batches <= 8
    assert delta("model_serve_inference_duration_seconds_count", model="m", device="cpu") == batches
    assert delta("model_serve_queue_wait_seconds_count", model="m") == batches
    # an unknown model name is counted under one bounded label, never as a new series
    assert delta("model_serve_requests_total", model="_unknown", code="404") == 1
    assert "nope-123" not in after.text
    assert after.value("model_serve_in_flight_requests", model="m") == 0


async def test_batch_size_shows_real_batching_and_queue_depth_under_load(
    app: tuple[httpx.AsyncClient, Runtime, Path],
) -> None:
    client, _, _ = app
    before = await _scrape(client)
    requests = [
        asyncio.create_task(client.post("/predict?model=m", content=png(i), headers=PNG)) for i in range(24)
    ]
    depth, in_flight = 0.0, 0.0
    for _ in range(200):  # bounded: 24 requests take about 3 forwards of 50 ms
        scrape = await _scrape(client)
        depth = max(depth, scrape.value("model_serve_queue_depth", model="m"))
        in_flight = max(in_flight, scrape.value("model_serve_in_flight_requests", model="m"))
        if all(task.done() for task in requests):
            break
        await asyncio.sleep(0.01)
    answers = await asyncio.gather(*requests)
    after = await _scrape(client)
    assert [a.status_code for a in answers] == [200] * 24
    images = after.value("model_serve_batch_size_sum", model="m") - before.value(
        "model_serve_batch_size_sum", model="m"
    )
    batches = after.value("model_serve_batch_size_count", model="m") - before.value(
        "model_serve_batch_size_count", model="m"
    )
    assert images == 24
    assert batches < images, "no request shared a forward with another: no dynamic batching"
    assert (
        after.value("model_serve_batch_size_bucket", model="m", le="1.0")
        - before.value("model_serve_batch_size_bucket", model="m", le="1.0")
        < batches
    )
    assert depth > 0, "the queue depth gauge never showed the queue"
    assert in_flight > 1
    assert after.value("model_serve_queue_depth", model="m") == 0
    assert after.value("model_serve_in_flight_requests", model="m") == 0


async def test_model_info_has_one_series_per_model_and_follows_reloads(
    app: tuple[httpx.AsyncClient, Runtime, Path],
) -> None:
    client, _, folder = app
    a, b = file_version(folder / "a.pt"), file_version(folder / "b.pt")

    async def info() -> dict[str, list[dict[str, str]]]:
        series: dict[str, list[dict[str, str]]] = {}
        for sample in (await _scrape(client)).samples("model_serve_model_info"):
            assert sample.value == 1
            series.setdefault(sample.labels["model"], []).append(sample.labels)
        return series

    start = await info()
    assert sorted(start) == ["m", "other"]
    assert [s["version"] for s in start["m"]] == [a]
    assert start["m"][0]["architecture"] == ARCH
    reload = await client.post("/models/m/reload", json={"checkpoint": "b.pt"}, headers=ADMIN)
    assert reload.status_code == 200, reload.text
    swapped = await info()
    assert [s["version"] for s in swapped["m"]] == [b]
    assert [s["version"] for s in swapped["other"]] == [a]
    refused = await client.post("/models/m/reload", json={"checkpoint": "nope.pt"}, headers=ADMIN)
    assert refused.status_code == 404
    assert (await client.post("/models/m/rollback", headers=ADMIN)).status_code == 200
    rolled = await info()
    assert [s["version"] for s in rolled["m"]] == [a]
    scrape = await _scrape(client)
    assert scrape.value("model_serve_reloads_total", model="m", outcome="success") == 1
    assert scrape.value("model_serve_reloads_total", model="m", outcome="rollback") == 1


async def test_promtool_accepts_the_exposition(app: tuple[httpx.AsyncClient, Runtime, Path]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    client, _, _ = app
    await client.post("/predict?model=m", content=png(3), headers=PNG)
    await client.post("/predict?model=m", content=b"", headers=PNG)
    await client.post("/models/m/reload", headers=ADMIN)
    text = (await _scrape(client)).text
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only exposition")
async def test_no_device_memory_family_without_cuda(app: tuple[httpx.AsyncClient, Runtime, Path]) -> None:
    client, _, _ = app
    scrape = await _scrape(client)
    assert "model_serve_device_memory_bytes" not in scrape.families


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
async def test_device_memory_per_gpu(tmp_path: Path) -> None:
    save_random_weights(ARCH, ARGS, tmp_path / "a.pt")
    entry = model_entry(ARCH, "a.pt", init_args=ARGS, devices=["cuda:0"])
    async with serving(write_config(tmp_path, {"g": entry})) as (client, _):
        assert (await client.post("/predict", content=png(5), headers=PNG)).status_code == 200
        scrape = await _scrape(client)
    family = scrape.families["model_serve_device_memory_bytes"]
    assert family.type == "gauge"
    devices = {s.labels["device"]: s.value for s in family.samples}
    assert set(devices) == {f"cuda:{i}" for i in range(torch.cuda.device_count())}
    assert devices["cuda:0"] > 0, "the model's weights are on cuda:0"
    assert scrape.value("model_serve_inference_duration_seconds_count", model="g", device="cuda:0") >= 1
