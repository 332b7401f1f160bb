"""A compiled model (``compile: default`` on a tiny model, CPU inductor): every batch size it can
be sent is compiled before readiness, padding changes no answer, and a reload compiles beside
the serving version without losing a request. Few tests: a compile costs seconds here.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import torch
from torch._dynamo.utils import counters

from tests.support.harness import ADMIN, model_entry, png, save_random_weights, serving, write_config
from tests.support.loadgen import matches, reference_scores
from tests.support.reference import class_probabilities
from tests.support.waiting import await_until

pytestmark = pytest.mark.anyio
ARCH = "tests.support.archs:pooled"
ARGS = {"in_channels": 1, "num_classes": 3}
IMAGES = [png(None, size=(20, 20), seed=seed) for seed in range(4)]
PNG = {"Content-Type": "image/png"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _compiles() -> int:
    """Frames dynamo tried to compile plus graphs it made, so far in this process."""
    return int(counters["frames"]["total"] + counters["stats"]["unique_graphs"])


def _config(tmp_path: Path, *, adaptive: bool = False, replicas: int = 1) -> Path:
    entry = model_entry(
        ARCH,
        "a.pt",
        init_args=ARGS,
        compile="default",
        cpu_replicas=replicas,
        batching={"max_batch_size": 4, "adaptive": adaptive},
    )
    return write_config(tmp_path, {"c": entry})


def _files(images: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (f"{i}.png", image, "image/png")) for i, image in enumerate(images)]


async def test_every_batch_size_is_compiled_before_readiness_and_padding_changes_no_answer(
    tmp_path: Path,
) -> None:
    model = save_random_weights(ARCH, ARGS, tmp_path / "a.pt")
    expected = reference_scores(model, IMAGES)
    tensors = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    async with serving(_config(tmp_path)) as (client, _):
        info = (await client.get("/models/c")).json()
        before = _compiles()
        for count in range(1, 5):  # one request of n images is one batch of n (padded to 1, 2, 4, 4)
            answer = await client.post("/predict?model=c&top_k=3", files=_files(IMAGES[:count]))
            assert answer.status_code == 200, answer.text
            for prediction, reference in zip(answer.json()["predictions"], expected[:count], strict=True):
                assert matches(prediction, reference), (count, prediction, reference)
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 1, 16, 16]}]}
        body["inputs"][0]["data"] = tensors.flatten().tolist()
        v2 = await client.post("/v2/models/c/infer", json=body)  # another door, another layout
        after = _compiles()
    assert info["compile"] == "default" and info["ready"]
    assert after == before, "a request compiled: some batch shape was not warmed before readiness"
    assert v2.status_code == 200, v2.text
    probabilities = next(o for o in v2.json()["outputs"] if o["name"] == "probabilities")["data"]
    for row, x in enumerate(tensors):
        reference = class_probabilities(model, x[None]).tolist()
        assert probabilities[row * 3 : row * 3 + 3] == pytest.approx(reference, abs=1e-5)


async def test_reloading_a_compiled_model_under_load_loses_nothing(tmp_path: Path) -> None:
    models = {
        name: save_random_weights(ARCH, ARGS, tmp_path / name, seed=s)
        for name, s in (("a.pt", 1), ("b.pt", 2))
    }
    async with serving(_config(tmp_path, adaptive=True)) as (client, _):
        first = (await client.get("/models/c")).json()["version"]
        deadline = time.monotonic() + 60.0  # a bound only: the loops stop once both versions answered
        done = asyncio.Event()
        answers: list[tuple[int, httpx.Response]] = []

        async def client_loop(seed: int) -> None:
            sent = 0
            while not done.is_set() and time.monotonic() < deadline:
                index = (seed + sent) % len(IMAGES)
                sent += 1
                answer = await client.post("/predict?model=c&top_k=3", content=IMAGES[index], headers=PNG)
                answers.append((index, answer))

        loops = [asyncio.create_task(client_loop(seed)) for seed in range(3)]
        await await_until(lambda: len(answers) >= 6, 30, "six answers from the first version")
        reload = await client.post("/models/c/reload", json={"checkpoint": "b.pt"}, headers=ADMIN)
        swapped = len(answers)  # answers sent after the reload returned are the second version's
        await await_until(lambda: len(answers) >= swapped + 9, 30, "answers after the reload")
        done.set()
        await asyncio.gather(*loops)
    assert reload.status_code == 200, reload.text
    refs = {
        first: reference_scores(models["a.pt"], IMAGES),
        reload.json()["version"]: reference_scores(models["b.pt"], IMAGES),
    }
    assert all(answer.status_code == 200 for _, answer in answers), {a.status_code for _, a in answers}
    assert {answer.json()["version"] for _, answer in answers} == set(refs), "both versions answered"
    for index, answer in answers:  # each answer is its own version's, never a mix
        body = answer.json()
        assert matches(body["predictions"][0], refs[body["version"]][index])


async def test_cpu_replicas_running_together_never_recompile(tmp_path: Path) -> None:
    """Replicas that share the cores per batch would change torch's thread count, which a
    compiled graph guards on: compiled CPU replicas keep a fixed share instead."""
    save_random_weights(ARCH, ARGS, tmp_path / "a.pt")
    async with serving(_config(tmp_path, replicas=2)) as (client, _):
        before = _compiles()
        for _ in range(3):  # alone, then together: both replicas busy at once
            answers = await asyncio.gather(
                *(client.post("/predict?model=c", content=image, headers=PNG) for image in IMAGES * 2)
            )
            assert all(answer.status_code == 200 for answer in answers)
        after = _compiles()
    assert after == before, "serving recompiled the model"
