"""Per-model options served in-process: precision, channels_last, fold_batchnorm, and the measured
batch cap.

Every option answers what float32 eager answers, within the rounding of its dtype; an option the
device cannot do stops the start with an error naming the model and the option.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from service.errors import ConfigError
from tests.support.harness import model_entry, png, save_random_weights, serving, write_config
from tests.support.reference import class_probabilities, preprocess

pytestmark = pytest.mark.anyio
PNG = {"Content-Type": "image/png"}
LENET = "models.lenet:lenet"
ARGS = {"num_classes": 10, "in_channels": 1}
INPUT = {"size": [32, 32], "channels": 1, "mean": [0.5], "std": [0.5]}
IMAGES = [png(None, size=(28, 28), seed=seed) for seed in range(6)]
# The largest difference from float32 eager in a softmax score: bfloat16 keeps 8 bits of
# mantissa (~0.4% per rounding), float16 11 bits; channels_last only reorders the sums.
TOLERANCE = {"float32": 1e-5, "bfloat16": 3e-2, "float16": 3e-3, "channels_last": 1e-5}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _files(images: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (f"{i}.png", image, "image/png")) for i, image in enumerate(images)]


async def test_each_precision_and_layout_answers_as_float32_eager(tmp_path: Path) -> None:
    model = save_random_weights(LENET, ARGS, tmp_path / "lenet.pt")
    options: dict[str, dict[str, Any]] = {
        "float32": {},
        "bfloat16": {"precision": "bfloat16"},
        "float16": {"precision": "float16"},
        "channels_last": {"channels_last": True},
    }
    batching = {"max_batch_size": 4, "adaptive": False}
    models = {
        name: model_entry(LENET, "lenet.pt", init_args=ARGS, input=INPUT, batching=batching, **extra)
        for name, extra in options.items()
    }
    expected = [class_probabilities(model, preprocess(i, (32, 32), 1, (0.5,), (0.5,))[0]) for i in IMAGES]
    async with serving(write_config(tmp_path, models)) as (client, _):
        for name, extra in options.items():
            await _answers_as(client, name, expected, top_k=10, tolerance=TOLERANCE[name])
            info = (await client.get(f"/models/{name}")).json()
            assert info["precision"] == extra.get("precision", "float32")
            assert info["channels_last"] is extra.get("channels_last", False)
            assert info["fold_batchnorm"] is False
            assert info["compile"] is False


async def _answers_as(
    client: httpx.AsyncClient, name: str, expected: list[torch.Tensor], *, top_k: int, tolerance: float
) -> None:
    """``IMAGES`` served by model ``name`` score as ``expected`` (eager float32) within ``tolerance``."""
    answer = await client.post(f"/predict?model={name}&top_k={top_k}", files=_files(IMAGES))
    assert answer.status_code == 200, answer.text
    for prediction, reference in zip(answer.json()["predictions"], expected, strict=True):
        scores = {e["class_index"]: e["score"] for e in prediction["top_k"]}
        want = {i: float(p) for i, p in enumerate(reference)}
        assert scores == pytest.approx(want, abs=tolerance), name


async def test_a_precision_the_device_cannot_run_stops_the_start_naming_model_and_option(
    tmp_path: Path,
) -> None:
    arch = "tests.support.archs:half_refusing"
    save_random_weights(arch, {}, tmp_path / "m.pt")
    config = write_config(tmp_path, {"m": model_entry(arch, "m.pt", precision="float16")})
    with pytest.raises(ConfigError) as raised:
        async with serving(config):
            pass
    message = str(raised.value)
    assert message.startswith("model 'm': precision float16 is not supported on cpu: RuntimeError: ")
    assert "not implemented for 'Half'" in message


async def test_a_compile_that_fails_stops_the_start_naming_model_and_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("simulated compiler failure")

    monkeypatch.setattr("service.pipeline.replica.torch.compile", lambda module, mode: broken)
    arch = "tests.support.archs:pooled"
    save_random_weights(arch, {}, tmp_path / "m.pt")
    config = write_config(tmp_path, {"m": model_entry(arch, "m.pt", compile="default")})
    with pytest.raises(ConfigError, match=r"^model 'm': compile default failed on cpu: RuntimeError: simul"):
        async with serving(config):
            pass


async def test_folded_batchnorms_answer_as_eager_alone_and_with_channels_last(tmp_path: Path) -> None:
    arch, args = "tests.support.archs:conv_norm", {"in_channels": 1, "num_classes": 3}
    model = save_random_weights(arch, args, tmp_path / "m.pt")
    options: dict[str, dict[str, Any]] = {
        "folded": {"fold_batchnorm": True},
        "folded-cl": {"fold_batchnorm": True, "channels_last": True},
    }
    models = {
        name: model_entry(arch, "m.pt", init_args=args, input=INPUT, batching={"max_batch_size": 4}, **extra)
        for name, extra in options.items()
    }
    expected = [class_probabilities(model, preprocess(i, (32, 32), 1, (0.5,), (0.5,))[0]) for i in IMAGES]
    async with serving(write_config(tmp_path, models)) as (client, _):
        for name, extra in options.items():
            await _answers_as(client, name, expected, top_k=3, tolerance=1e-5)
            info = (await client.get(f"/models/{name}")).json()
            assert (info["fold_batchnorm"], info["channels_last"]) == (True, "channels_last" in extra)


async def test_fold_batchnorm_on_a_model_fx_cannot_trace_stops_the_start_naming_model_and_option(
    tmp_path: Path,
) -> None:
    arch = "tests.support.archs:branching_conv_norm"
    save_random_weights(arch, {}, tmp_path / "m.pt")
    config = write_config(tmp_path, {"m": model_entry(arch, "m.pt", fold_batchnorm=True)})
    with pytest.raises(ConfigError) as raised:
        async with serving(config):
            pass
    assert str(raised.value).startswith(
        "model 'm': fold_batchnorm needs a traceable model: torch.fx cannot trace its forward (TraceError: "
    )


def _costly(tmp_path: Path, name: str, **cost: float) -> dict[str, Any]:
    args = {**cost, "in_channels": 1, "num_classes": 3}
    save_random_weights("tests.support.archs:costly_classifier", args, tmp_path / f"{name}.pt")
    return model_entry(
        "tests.support.archs:costly_classifier",
        f"{name}.pt",
        init_args=args,
        batching={"max_batch_size": 8},
        cpu_replicas=1,
    )


async def test_the_batch_cap_follows_the_cost_of_a_batch(tmp_path: Path) -> None:
    """0.002 s x n^2: one image per batch pays best; 0.02 s + 0.001 s x n: the largest batch."""
    models = {
        "quadratic": _costly(tmp_path, "quadratic", per_image_sq_s=0.002),
        "linear": _costly(tmp_path, "linear", base_s=0.02, per_image_s=0.001),
    }
    async with serving(write_config(tmp_path, models)) as (client, _):
        caps = {name: (await client.get(f"/models/{name}")).json()["batching"]["cap"] for name in models}
        answers = await asyncio.gather(
            *(client.post("/predict?model=quadratic", content=png(v), headers=PNG) for v in range(8))
        )
        metrics = (await client.get("/metrics")).text
    assert caps == {"quadratic": 1, "linear": 8}
    assert all(answer.status_code == 200 for answer in answers)
    assert 'model_serve_batch_cap{model="quadratic"} 1.0' in metrics
    assert 'model_serve_batch_cap{model="linear"} 8.0' in metrics
    # eight requests queued at once, yet every batch of the quadratic model held one image
    assert 'model_serve_batch_size_bucket{le="1.0",model="quadratic"} 8.0' in metrics
    assert 'model_serve_batch_size_count{model="quadratic"} 8.0' in metrics


async def test_without_adaptive_batching_the_cap_is_max_batch_size(tmp_path: Path) -> None:
    entry = _costly(tmp_path, "q", per_image_sq_s=0.002)
    entry["batching"] = {"max_batch_size": 8, "adaptive": False}
    async with serving(write_config(tmp_path, {"q": entry})) as (client, _):
        info = (await client.get("/models/q")).json()
    assert info["batching"] == {
        "max_batch_size": 8,
        "max_delay_ms": 0.0,
        "max_queue_size": 1024,
        "adaptive": False,
        "cap": 8,
    }
