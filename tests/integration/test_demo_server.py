"""The demo served by a real uvicorn process: answers equal the same models run in-process."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from models.demo import DIGITS, SHAPES, DemoModel
from models.demo_training import load_demo_model
from tests.support.reference import class_probabilities, preprocess, segmentation_mask
from tests.support.serving import ServerProcess

_LOADED: dict[str, torch.nn.Module] = {}


def _in_process(demo: DemoModel) -> torch.nn.Module:
    if demo.name not in _LOADED:
        _LOADED[demo.name] = load_demo_model(demo)
    return _LOADED[demo.name]


def _reference_probs(demo: DemoModel, data: bytes) -> torch.Tensor:
    x, _ = preprocess(data, demo.size, demo.channels, demo.mean, demo.std)
    return class_probabilities(_in_process(demo), x)


def _reference_mask(data: bytes) -> np.ndarray:
    x, original = preprocess(data, SHAPES.size, SHAPES.channels, SHAPES.mean, SHAPES.std)
    return segmentation_mask(_in_process(SHAPES), x, original)


def _png(data: str | bytes) -> np.ndarray:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    with Image.open(io.BytesIO(raw)) as image:
        assert image.mode == "L"
        return np.asarray(image)


def _post_image(server: ServerProcess, data: bytes, params: str = "", **headers: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/predict{params}", content=data, headers={"Content-Type": "image/png", **headers}
    )


def _digit_samples(samples_dir: Path) -> list[Path]:
    paths = sorted(samples_dir.glob("digit*.png"))
    assert len(paths) >= 5, f"demo digit samples missing in {samples_dir}"
    return paths


def test_digit_samples_match_the_model_in_process(demo_server: ServerProcess, samples_dir: Path) -> None:
    for path in _digit_samples(samples_dir):
        data = path.read_bytes()
        answer = _post_image(demo_server, data, "?top_k=3")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["model"], body["task"]) == ("digits", "classification")
        assert len(body["version"]) == 12
        probs = _reference_probs(DIGITS, data)
        prediction = body["predictions"][0]
        assert prediction["class_index"] == int(probs.argmax())
        assert prediction["label"] == DIGITS.labels[prediction["class_index"]]
        assert [entry["class_index"] for entry in prediction["top_k"]] == probs.topk(3).indices.tolist()
        for entry in prediction["top_k"]:
            assert entry["score"] == pytest.approx(float(probs[entry["class_index"]]), abs=1e-4)


def test_digit_samples_are_read_correctly(demo_server: ServerProcess, samples_dir: Path) -> None:
    """The demo model is trained: each labelled sample is classified as its digit."""
    for path in _digit_samples(samples_dir):
        expected = "".join(ch for ch in path.stem if ch.isdigit())
        answer = _post_image(demo_server, path.read_bytes()).json()
        assert answer["predictions"][0]["label"] == expected, path.name


def test_segmentation_mask_matches_the_model_in_process(
    demo_server: ServerProcess, samples_dir: Path
) -> None:
    sample = sorted(samples_dir.glob("shapes*"))[0]
    data = sample.read_bytes()
    answer = httpx.post(f"{demo_server.url}/predict?model=shapes", files=[("file", (sample.name, data))])
    assert answer.status_code == 200, answer.text
    prediction = answer.json()["predictions"][0]
    mask = _png(prediction["mask_png_base64"])
    expected = _reference_mask(data)
    with Image.open(sample) as image:
        assert (prediction["width"], prediction["height"]) == image.size
    assert mask.shape == expected.shape
    assert (mask == expected).mean() > 0.995
    counts = np.bincount(mask.ravel(), minlength=len(SHAPES.labels))
    assert prediction["class_pixel_counts"] == {str(i): int(n) for i, n in enumerate(counts)}
    assert len(np.unique(mask)) > 1, "a trained U-Net finds shapes in the sample"


def test_accept_png_returns_the_mask_itself(demo_server: ServerProcess, samples_dir: Path) -> None:
    sample = sorted(samples_dir.glob("shapes*"))[0]
    data = sample.read_bytes()
    as_json = _post_image(demo_server, data, "?model=shapes").json()["predictions"][0]
    as_png = _post_image(demo_server, data, "?model=shapes", Accept="image/png")
    assert as_png.status_code == 200
    assert as_png.headers["content-type"] == "image/png"
    assert len(as_png.headers["x-model-version"]) == 12
    assert np.array_equal(_png(as_png.content), _png(as_json["mask_png_base64"]))


def test_multi_image_request_equals_single_requests(demo_server: ServerProcess, samples_dir: Path) -> None:
    paths = _digit_samples(samples_dir)
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]
    batch = httpx.post(f"{demo_server.url}/predict", files=files)
    assert batch.status_code == 200, batch.text
    singles = [_post_image(demo_server, p.read_bytes()).json()["predictions"][0] for p in paths]
    together = batch.json()["predictions"]
    assert [p["class_index"] for p in together] == [p["class_index"] for p in singles]
    for one, other in zip(together, singles, strict=True):
        assert one["score"] == pytest.approx(other["score"], abs=1e-5)


def _noise_digits(count: int) -> list[bytes]:
    rng = np.random.default_rng(7)
    blobs = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    return blobs


def _batch_histogram(server: ServerProcess) -> tuple[float, float]:
    """(batches, batches of size 1) served so far for the digits model."""
    text = httpx.get(f"{server.url}/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == "model_serve_batch_size":
            samples = [s for s in family.samples if s.labels.get("model") == "digits"]
            count = next(s.value for s in samples if s.name.endswith("_count"))
            ones = next(s.value for s in samples if s.labels.get("le") == "1.0")
            return count, ones
    raise AssertionError("model_serve_batch_size missing")


def test_64_concurrent_requests_each_get_their_own_answer(demo_server: ServerProcess) -> None:
    blobs = _noise_digits(64)
    expected = [_reference_probs(DIGITS, blob) for blob in blobs]
    batches_before, ones_before = _batch_histogram(demo_server)

    async def send_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=demo_server.url, limits=limits, timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post("/predict?top_k=10", content=b, headers={"Content-Type": "image/png"})
                    for b in blobs
                )
            )

    answers = asyncio.run(send_all())
    for answer, probs in zip(answers, expected, strict=True):
        assert answer.status_code == 200, answer.text
        scores = {e["class_index"]: e["score"] for e in answer.json()["predictions"][0]["top_k"]}
        assert scores == pytest.approx({i: float(p) for i, p in enumerate(probs)}, abs=1e-4)
    batches_after, ones_after = _batch_histogram(demo_server)
    batches = batches_after - batches_before
    assert batches < 64, "64 concurrent images must share batches"
    assert ones_after - ones_before < batches, "some batch must hold more than one image"


def test_models_routes_describe_the_demo(demo_server: ServerProcess) -> None:
    listing = httpx.get(f"{demo_server.url}/models").json()["models"]
    assert {m["name"] for m in listing} == {"digits", "shapes"}
    digits = httpx.get(f"{demo_server.url}/models/digits").json()
    assert digits["architecture"] == DIGITS.architecture
    assert digits["task"] == "classification"
    assert digits["devices"] and digits["loaded_at"].endswith("Z")
    assert digits["batching"]["max_batch_size"] >= 1
    assert httpx.get(f"{demo_server.url}/models/nope").status_code == 404


def test_openapi_documents_every_route(demo_server: ServerProcess) -> None:
    spec = httpx.get(f"{demo_server.url}/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/predict",
        "/models",
        "/models/{name}",
        "/models/{name}/reload",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    predict = paths["/predict"]["post"]
    assert {p["name"] for p in predict["parameters"]} >= {"model", "top_k"}
    assert "multipart/form-data" in predict["requestBody"]["content"]
    assert {"200", "400", "404", "413", "415", "422", "503", "504"} <= set(predict["responses"])
