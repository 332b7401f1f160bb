"""User configurations served in-process: multi-output models, faults, deadlines, queue bounds."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.harness import model_entry, png, save_random_weights, serving, write_config
from tests.support.reference import class_probabilities, preprocess, segmentation_mask
from tests.support.waiting import await_until

pytestmark = pytest.mark.anyio
PNG = {"Content-Type": "image/png"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize(("output", "index"), [(None, 0), (0, 0)])
async def test_tuple_output_serves_the_named_logits(tmp_path: Path, output: int | None, index: int) -> None:
    args = {"in_channels": 3, "num_classes": 4}
    model = save_random_weights("tests.support.archs:tuple_classifier", args, tmp_path / "t.pt")
    entry = model_entry(
        "tests.support.archs:tuple_classifier",
        "t.pt",
        init_args=args,
        output=output,
        input={"size": [16, 16], "channels": 3, "mean": [0.5], "std": [0.25]},
    )
    image = png(None, mode="RGB")
    async with serving(write_config(tmp_path, {"multi": entry})) as (client, _):
        answer = await client.post("/predict", content=image, headers=PNG)
    assert answer.status_code == 200, answer.text
    x, _ = preprocess(image, (16, 16), 3, (0.5,), (0.25,))
    with torch.inference_mode():
        expected = torch.softmax(model(x)[index], dim=1)[0]
    top = answer.json()["predictions"][0]
    assert top["class_index"] == int(expected.argmax())
    assert top["score"] == pytest.approx(float(expected.max()), abs=1e-5)


@pytest.mark.parametrize("output", [None, "aux"])
async def test_torchvision_segmentation_dict_output(tmp_path: Path, output: str | None) -> None:
    architecture = "torchvision.models.segmentation:deeplabv3_mobilenet_v3_large"
    args = {"weights": None, "weights_backbone": None, "num_classes": 3, "aux_loss": True}
    model = save_random_weights(architecture, args, tmp_path / "seg.pt")
    size, mean, std = [48, 48], [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    entry = model_entry(
        architecture,
        "seg.pt",
        task="segmentation",
        init_args=args,
        output=output,
        input={"size": size, "channels": 3, "mean": mean, "std": std},
        batching={"max_batch_size": 2},
    )
    image = png(None, size=(37, 29), mode="RGB", seed=3)
    async with serving(write_config(tmp_path, {"seg": entry})) as (client, _):
        answer = await client.post("/predict", content=image, headers=PNG)
    assert answer.status_code == 200, answer.text
    x, original = preprocess(image, size, 3, mean, std)

    class Picked(torch.nn.Module):
        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return model(inputs)[output or "out"]

    expected = segmentation_mask(Picked(), x, original)
    prediction = answer.json()["predictions"][0]
    with Image.open(io.BytesIO(base64.b64decode(prediction["mask_png_base64"]))) as mask_image:
        mask = np.asarray(mask_image)
    assert (prediction["width"], prediction["height"]) == (37, 29)
    assert (mask == expected).mean() > 0.99


async def test_a_failing_batch_fails_only_its_requests(tmp_path: Path) -> None:
    save_random_weights("tests.support.archs:failing_on_bright", {}, tmp_path / "f.pt")
    entry = model_entry("tests.support.archs:failing_on_bright", "f.pt", batching={"max_batch_size": 1})
    async with serving(write_config(tmp_path, {"fragile": entry})) as (client, runtime):
        answers = await asyncio.gather(
            client.post("/predict", content=png(255), headers=PNG),
            *(client.post("/predict", content=png(10 * i), headers=PNG) for i in range(6)),
        )
        after = await client.post("/predict", content=png(30), headers=PNG)
        assert runtime.registry.ready
    assert answers[0].status_code == 500
    assert answers[0].json()["error"]["code"] == "inference_failed"
    assert "simulated fault" in answers[0].json()["error"]["message"]
    assert [a.status_code for a in answers[1:]] == [200] * 6
    assert after.status_code == 200


async def test_deadline_answers_504_and_drops_the_work(tmp_path: Path) -> None:
    save_random_weights("tests.support.archs:slow_classifier", {"delay_s": 0.5}, tmp_path / "s.pt")
    entry = model_entry(
        "tests.support.archs:slow_classifier",
        "s.pt",
        init_args={"delay_s": 0.5},
        batching={"max_batch_size": 1},
    )
    config = write_config(tmp_path, {"slow": entry}, server={"request_timeout_s": 0.2})
    async with serving(config) as (client, runtime):
        answers = await asyncio.gather(
            *(client.post("/predict", content=png(i), headers=PNG) for i in range(4))
        )
        served = runtime.registry.get("slow")
        assert [a.status_code for a in answers] == [504] * 4
        assert answers[0].json()["error"]["code"] == "timeout"
        await await_until(  # the batch that was already running finishes, and nothing follows it
            lambda: (
                served.batcher.depth == 0
                and sum(r.batches_served for r in served.replicas) >= 1
                and not any(r.busy for r in served.replicas)
            ),
            10,
            "the running batch done and the queue empty",
        )
        assert sum(r.batches_served for r in served.replicas) <= 2, "timed-out requests were skipped"


async def test_full_queue_answers_503_with_retry_after(tmp_path: Path) -> None:
    save_random_weights("tests.support.archs:slow_classifier", {"delay_s": 0.3}, tmp_path / "s.pt")
    entry = model_entry(
        "tests.support.archs:slow_classifier",
        "s.pt",
        init_args={"delay_s": 0.3},
        batching={"max_batch_size": 1, "max_queue_size": 2},
    )
    async with serving(write_config(tmp_path, {"slow": entry})) as (client, _):
        answers = await asyncio.gather(
            *(client.post("/predict", content=png(i), headers=PNG) for i in range(8))
        )
        refused = [a for a in answers if a.status_code == 503]
        assert refused and all(a.json()["error"]["code"] == "queue_full" for a in refused)
        assert all(int(a.headers["retry-after"]) >= 1 for a in refused)
        assert sum(a.status_code == 200 for a in answers) >= 2  # the queued ones
        assert (await client.post("/predict", content=png(1), headers=PNG)).status_code == 200


async def test_two_cpu_replicas_both_serve(tmp_path: Path) -> None:
    save_random_weights("tests.support.archs:slow_classifier", {"delay_s": 0.02}, tmp_path / "s.pt")
    entry = model_entry(
        "tests.support.archs:slow_classifier",
        "s.pt",
        init_args={"delay_s": 0.02},
        devices=["cpu", "cpu"],
        batching={"max_batch_size": 2},
    )
    async with serving(write_config(tmp_path, {"twin": entry})) as (client, _):
        answers = await asyncio.gather(
            *(client.post("/predict", content=png(i), headers=PNG) for i in range(24))
        )
        assert all(a.status_code == 200 for a in answers)
        replicas = (await client.get("/models/twin")).json()["replicas"]
    assert len(replicas) == 2
    assert all(r["batches"] > 0 for r in replicas), replicas


async def test_center_crop_option_changes_only_the_resize(tmp_path: Path) -> None:
    args = {"in_channels": 1, "num_classes": 3}
    save_random_weights("tests.support.archs:tuple_classifier", args, tmp_path / "t.pt")
    stretch = model_entry("tests.support.archs:tuple_classifier", "t.pt", init_args=args)
    crop = model_entry(
        "tests.support.archs:tuple_classifier",
        "t.pt",
        init_args=args,
        input={"size": [16, 16], "channels": 1, "mean": [0.5], "std": [0.5], "resize": "center_crop"},
    )
    wide = png(None, size=(64, 16), seed=5)
    async with serving(write_config(tmp_path, {"stretch": stretch, "crop": crop})) as (client, _):
        a = (await client.post("/predict?model=stretch", content=wide, headers=PNG)).json()
        b = (await client.post("/predict?model=crop", content=wide, headers=PNG)).json()
    assert a["version"] == b["version"]
    assert a["predictions"][0]["score"] != b["predictions"][0]["score"]


def test_reference_helpers_agree_with_a_plain_forward() -> None:
    """Guards the test oracle itself: preprocessing a flat grey image gives a flat tensor."""
    x, original = preprocess(png(128, size=(10, 6)), (4, 4), 1, (0.5,), (0.5,))
    assert original == (10, 6)
    assert torch.allclose(x, torch.full_like(x, (128 / 255 - 0.5) / 0.5), atol=1e-6)
    probs = class_probabilities(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)), x)
    assert probs.sum().item() == pytest.approx(1.0)


async def test_an_image_failing_to_decode_fails_only_its_request(tmp_path: Path) -> None:
    """Large images decode in the worker pool beside other requests: a truncated one fails alone (400)."""
    args = {"in_channels": 1, "num_classes": 3}
    save_random_weights("tests.support.archs:tuple_classifier", args, tmp_path / "t.pt")
    entry = model_entry(
        "tests.support.archs:tuple_classifier", "t.pt", init_args=args, batching={"max_batch_size": 8}
    )
    large = png(None, size=(400, 300), seed=9)
    truncated = large[: len(large) // 2]  # the header is intact: it passes the pixel check
    async with serving(write_config(tmp_path, {"m": entry})) as (client, _):
        answers = await asyncio.gather(
            *(client.post("/predict", content=large, headers=PNG) for _ in range(3)),
            client.post("/predict", content=truncated, headers=PNG),
            *(client.post("/predict", content=large, headers=PNG) for _ in range(3)),
        )
    assert [a.status_code for a in answers] == [200, 200, 200, 400, 200, 200, 200]
    assert answers[3].json()["error"]["code"] == "bad_image"
