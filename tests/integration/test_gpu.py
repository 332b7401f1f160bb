"""Every visible GPU serves (skipped without CUDA): replicas, pinned staging, device metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from tests.support.harness import model_entry, png, save_random_weights, serving, write_config
from tests.support.reference import class_probabilities, preprocess

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.anyio,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
PNG = {"Content-Type": "image/png"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_auto_devices_serve_on_every_gpu_and_match_the_cpu(tmp_path: Path) -> None:
    args = {"num_classes": 10}
    model = save_random_weights("models.lenet:lenet", args, tmp_path / "lenet.pt")
    entry = model_entry(
        "models.lenet:lenet",
        "lenet.pt",
        init_args=args,
        devices="auto",
        input={"size": [32, 32], "channels": 1, "mean": [0.5], "std": [0.5]},
        batching={"max_batch_size": 16},
    )
    images = [png(None, size=(28, 28), seed=seed) for seed in range(48)]
    async with serving(write_config(tmp_path, {"lenet": entry})) as (client, _):
        answers = await asyncio.gather(
            *(client.post("/predict?top_k=10", content=i, headers=PNG) for i in images)
        )
        info = (await client.get("/models/lenet")).json()
        metrics = (await client.get("/metrics")).text
    gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    assert info["devices"] == gpus
    assert all(r["batches"] > 0 for r in info["replicas"]) or len(gpus) == 1
    for image, answer in zip(images, answers, strict=True):
        assert answer.status_code == 200, answer.text
        x, _ = preprocess(image, (32, 32), 1, (0.5,), (0.5,))
        expected = class_probabilities(model, x)
        scores = {e["class_index"]: e["score"] for e in answer.json()["predictions"][0]["top_k"]}
        assert scores == pytest.approx({i: float(p) for i, p in enumerate(expected)}, abs=1e-4)
    for gpu in gpus:
        assert f'model_serve_device_memory_bytes{{device="{gpu}"}}' in metrics
    print(f"served on {gpus}: replicas {info['replicas']}")


async def test_checkpoint_saved_on_another_gpu_index_loads_here(tmp_path: Path) -> None:
    """A file tagged cuda:N for an N this machine lacks maps onto the replica's GPU."""
    args = {"num_classes": 10}
    model = save_random_weights("models.lenet:lenet", args, tmp_path / "src.pt")
    missing_index = torch.cuda.device_count() + 2
    real_tag = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: f"cuda:{missing_index}"  # type: ignore[assignment]
    try:
        torch.save(model.state_dict(), tmp_path / "far.pt")
    finally:
        torch.serialization.location_tag = real_tag
    entry = model_entry(
        "models.lenet:lenet",
        "far.pt",
        init_args=args,
        devices=["cuda:0"],
        input={"size": [32, 32], "channels": 1, "mean": [0.5], "std": [0.5]},
    )
    async with serving(write_config(tmp_path, {"far": entry})) as (client, _):
        answer = await client.post("/predict", content=png(None, size=(28, 28)), headers=PNG)
    assert answer.status_code == 200, answer.text
