"""The Open Inference Protocol (v2) doors with real tritonclient clients against real servers.

Answers are checked against the demo models run in-process (the server's own decode and
normalisation, the shipped checkpoints) and against ``/predict`` on the same server, through
every door: REST JSON, REST binary and gRPC. Malformed requests get 400 / INVALID_ARGUMENT
and leave the server healthy; requests from all three doors share one batcher.
"""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from load_tests.naive_server import NaiveModel, load_model
from service import __version__
from service.demo import demo_config
from service.images.decode import decode_image
from tests.support.harness import model_entry, png, save_random_weights, write_config
from tests.support.loadgen import PNG, reference_scores, wait_until
from tests.support.serving import ServerProcess

DOORS = ("rest-json", "rest-binary", "grpc")
IMAGES = {"digits": ["digit_3.png", "digit_7.png"], "shapes": ["shapes_1.png", "shapes_2.jpg"]}
MAX_PIXELS = 10_000_000


# --- the in-process reference ----------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A demo model loaded in this process exactly as the server loads it."""

    loaded: NaiveModel

    def tensor(self, blobs: list[bytes]) -> torch.Tensor:
        """The normalised model input [N, C, H, W] of encoded images."""
        model = self.loaded.model
        pixels = [decode_image(b, self.loaded.spec.input, max_pixels=MAX_PIXELS).pixels for b in blobs]
        return model.normalise(torch.stack(pixels))

    @torch.inference_mode()
    def run(self, x: torch.Tensor) -> np.ndarray:
        """Softmax rows (classification) or argmax masks at the input size (segmentation)."""
        logits = self.loaded.model(x)
        if self.loaded.spec.task == "classification":
            return torch.softmax(logits.float(), dim=1).numpy()
        return logits.argmax(dim=1).to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def references() -> dict[str, Reference]:
    config = demo_config(environ={})
    return {name: Reference(load_model(spec)) for name, spec in config.models.items()}


@pytest.fixture(scope="module")
def images(samples_dir: Path) -> dict[str, list[bytes]]:
    return {model: [(samples_dir / f).read_bytes() for f in files] for model, files in IMAGES.items()}


@pytest.fixture(scope="module")
def http_client(demo_server: ServerProcess) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(demo_server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(demo_server: ServerProcess) -> Iterator[triton_grpc.InferenceServerClient]:
    client = triton_grpc.InferenceServerClient(demo_server.grpc_address)
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(demo_server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    """The raw protocol stub, for requests tritonclient refuses to build."""
    with grpc.insecure_channel(demo_server.grpc_address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


# --- one inference through any door ----------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    version: str
    id: str
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class Output:
    name: str
    class_count: int = 0


def _infer(
    door: str,
    clients: tuple[triton_http.InferenceServerClient, triton_grpc.InferenceServerClient],
    model: str,
    value: list[bytes] | np.ndarray,
    outputs: list[Output],
    request_id: str,
) -> Answer:
    """``value``: encoded images (input ``image``) or a normalised FP32 batch (input ``input``)."""
    is_image = isinstance(value, list)
    name, datatype = ("image", "BYTES") if is_image else ("input", "FP32")
    shape = [len(value)] if isinstance(value, list) else list(value.shape)
    if door == "grpc":
        grpc_input = triton_grpc.InferInput(name, shape, datatype)
        grpc_input.set_data_from_numpy(np.array(value, dtype=object) if is_image else value)
        requested = [triton_grpc.InferRequestedOutput(o.name, class_count=o.class_count) for o in outputs]
        result = clients[1].infer(model, [grpc_input], outputs=requested, request_id=request_id)
        response = result.get_response()
        version, echoed = response.model_version, response.id
    else:
        binary = door == "rest-binary"
        http_input = triton_http.InferInput(name, shape, datatype)
        if is_image and not binary:  # JSON BYTES elements are base64 strings of the files
            value = [base64.b64encode(blob) for blob in value]
        http_input.set_data_from_numpy(
            np.array(value, dtype=object) if is_image else value, binary_data=binary
        )
        http_outputs = [
            triton_http.InferRequestedOutput(o.name, binary_data=binary, class_count=o.class_count)
            for o in outputs
        ]
        result = clients[0].infer(model, [http_input], outputs=http_outputs, request_id=request_id)
        response = result.get_response()
        version, echoed = response["model_version"], response.get("id")
    return Answer(version, echoed, {o.name: result.as_numpy(o.name) for o in outputs})


@pytest.fixture(scope="module")
def clients(
    http_client: triton_http.InferenceServerClient, grpc_client: triton_grpc.InferenceServerClient
) -> tuple[triton_http.InferenceServerClient, triton_grpc.InferenceServerClient]:
    return http_client, grpc_client


@pytest.fixture(scope="module")
def versions(demo_server: ServerProcess) -> dict[str, str]:
    """Each model's version as ``GET /models/{name}`` reports it."""
    return {name: httpx.get(f"{demo_server.url}/models/{name}").json()["version"] for name in IMAGES}


def _predict(url: str, model: str, blobs: list[bytes], top_k: int = 5) -> dict[str, Any]:
    files = [("file", (f"{i}.img", blob, "application/octet-stream")) for i, blob in enumerate(blobs)]
    answer = httpx.post(f"{url}/predict", params={"model": model, "top_k": top_k}, files=files, timeout=30)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


# --- health and metadata ---------------------------------------------------------------------


def test_server_health_and_metadata_through_both_doors(
    demo_server: ServerProcess,
    http_client: triton_http.InferenceServerClient,
    grpc_client: triton_grpc.InferenceServerClient,
) -> None:
    assert http_client.is_server_live() and http_client.is_server_ready()
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    expected = {
        "name": "model-serve",
        "version": __version__,
        "extensions": [
            "binary_tensor_data",
            "classification",
            "model_configuration",
            "model_repository",
            "statistics",
        ],
    }
    assert http_client.get_server_metadata() == expected
    grpc_metadata = grpc_client.get_server_metadata()
    assert {
        "name": grpc_metadata.name,
        "version": grpc_metadata.version,
        "extensions": list(grpc_metadata.extensions),
    } == expected
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert httpx.get(demo_server.url + path).status_code == 200


def _grpc_metadata(response: Any) -> dict[str, Any]:
    def tensors(items: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": response.name,
        "versions": list(response.versions),
        "platform": response.platform,
        "inputs": tensors(response.inputs),
        "outputs": tensors(response.outputs),
    }


@pytest.mark.parametrize("model", ["digits", "shapes"])
def test_model_ready_and_metadata_through_both_doors(
    model: str,
    versions: dict[str, str],
    http_client: triton_http.InferenceServerClient,
    grpc_client: triton_grpc.InferenceServerClient,
) -> None:
    version = versions[model]
    channels, size, outputs = (
        (1, 32, [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                 {"name": "class_index", "datatype": "INT64", "shape": [-1]}])
        if model == "digits"
        else (3, 64, [{"name": "mask", "datatype": "UINT8", "shape": [-1, 64, 64]}])
    )  # fmt: skip
    expected = {
        "name": model,
        "versions": [version],
        "platform": "pytorch",
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [-1, 1]},
            {"name": "input", "datatype": "FP32", "shape": [-1, channels, size, size]},
        ],
        "outputs": outputs,
    }
    assert http_client.get_model_metadata(model) == expected
    assert http_client.get_model_metadata(model, model_version=version) == expected
    assert _grpc_metadata(grpc_client.get_model_metadata(model)) == expected
    assert _grpc_metadata(grpc_client.get_model_metadata(model, model_version=version)) == expected
    assert http_client.is_model_ready(model) and http_client.is_model_ready(model, version)
    assert grpc_client.is_model_ready(model) and grpc_client.is_model_ready(model, version)


def test_a_version_other_than_the_active_one_is_not_found(
    demo_server: ServerProcess,
    versions: dict[str, str],
    stub: pb_grpc.GRPCInferenceServiceStub,
    images: dict[str, list[bytes]],
) -> None:
    url, wrong = demo_server.url, "000000000000"
    good_body = _json_image_request(images["digits"][0])
    for method, path in (
        ("GET", f"/v2/models/digits/versions/{wrong}"),
        ("GET", f"/v2/models/digits/versions/{wrong}/ready"),
        ("POST", f"/v2/models/digits/versions/{wrong}/infer"),
        ("GET", "/v2/models/nope"),
        ("GET", "/v2/models/nope/ready"),
    ):
        answer = httpx.request(method, url + path, content=good_body if method == "POST" else None)
        assert answer.status_code == 404, (path, answer.text)
        assert isinstance(answer.json()["error"], str)
    right = httpx.post(f"{url}/v2/models/digits/versions/{versions['digits']}/infer", content=good_body)
    assert right.status_code == 200, right.text
    assert right.json()["model_version"] == versions["digits"]

    infer = _grpc_image_request("digits", images["digits"][0])
    infer.model_version = wrong
    calls: tuple[Callable[[], Any], ...] = (
        lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="digits", version=wrong)),
        lambda: stub.ModelReady(pb.ModelReadyRequest(name="digits", version=wrong)),
        lambda: stub.ModelInfer(infer),
    )
    for call in calls:
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND, raised.value.details()
        assert wrong in raised.value.details()
    infer.model_version = versions["digits"]
    assert stub.ModelInfer(infer).model_version == versions["digits"]


# --- inference ---------------------------------------------------------------------------------


def _outputs_of(model: str) -> list[Output]:
    return [Output("probabilities"), Output("class_index")] if model == "digits" else [Output("mask")]


def _check_against_reference(
    model: str, answer: Answer, expected: np.ndarray, version: str, request_id: str
) -> None:
    assert answer.version == version
    assert answer.id == request_id
    if model == "digits":
        probabilities = answer.outputs["probabilities"]
        assert probabilities.dtype == np.float32 and probabilities.shape == expected.shape
        np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-5)
        assert answer.outputs["class_index"].dtype == np.int64
        assert answer.outputs["class_index"].tolist() == expected.argmax(axis=1).tolist()
    else:
        mask = answer.outputs["mask"]
        assert mask.dtype == np.uint8 and mask.shape == expected.shape == (2, 64, 64)
        assert len(np.unique(expected)) > 1, "the reference mask must not be trivial"
        np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("model", ["digits", "shapes"])
def test_image_input_answers_like_the_model_in_process_and_predict(
    door: str,
    model: str,
    clients: tuple[triton_http.InferenceServerClient, triton_grpc.InferenceServerClient],
    references: dict[str, Reference],
    images: dict[str, list[bytes]],
    versions: dict[str, str],
    demo_server: ServerProcess,
) -> None:
    blobs = images[model]
    expected = references[model].run(references[model].tensor(blobs))
    request_id = f"{door}-{model}-image"
    answer = _infer(door, clients, model, blobs, _outputs_of(model), request_id)
    _check_against_reference(model, answer, expected, versions[model], request_id)

    predicted = _predict(demo_server.url, model, blobs)
    assert predicted["version"] == answer.version
    if model == "digits":
        digits = [int(f[len("digit_")]) for f in IMAGES[model]]
        assert digits == expected.argmax(axis=1).tolist()  # the model is right: a real oracle
        for row, prediction in enumerate(predicted["predictions"]):
            assert prediction["class_index"] == answer.outputs["class_index"][row]
            top = answer.outputs["probabilities"][row][prediction["class_index"]]
            assert abs(prediction["score"] - float(top)) <= 1e-5


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("model", ["digits", "shapes"])
def test_tensor_input_goes_to_the_model_as_it_is(
    door: str,
    model: str,
    clients: tuple[triton_http.InferenceServerClient, triton_grpc.InferenceServerClient],
    references: dict[str, Reference],
    images: dict[str, list[bytes]],
    versions: dict[str, str],
) -> None:
    x = references[model].tensor(images[model])
    # a tensor no image decodes to: the server must not re-normalise or re-quantise it
    x = x + torch.linspace(-0.01, 0.01, x.numel()).reshape(x.shape)
    expected = references[model].run(x)
    request_id = f"{door}-{model}-tensor"
    answer = _infer(door, clients, model, x.numpy().astype(np.float32), _outputs_of(model), request_id)
    _check_against_reference(model, answer, expected, versions[model], request_id)


@pytest.mark.parametrize("door", ["rest-binary", "grpc"])
def test_a_request_with_both_inputs_is_served_from_the_tensor(
    door: str,
    clients: tuple[triton_http.InferenceServerClient, triton_grpc.InferenceServerClient],
    references: dict[str, Reference],
    images: dict[str, list[bytes]],
) -> None:
    """What perf_analyzer sends: every listed input. The image is one the tensor is not."""
    x = references["digits"].tensor(images["digits"][:1]).numpy().astype(np.float32)
    expected = references["digits"].run(torch.from_numpy(x))
    other_image = np.array(images["digits"][1:], dtype=object)
    if door == "grpc":
        module: Any = triton_grpc
        client: Any = clients[1]
    else:
        module, client = triton_http, clients[0]
    tensor = module.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    image = module.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(other_image)
    result = client.infer("digits", [image, tensor])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("k", [1, 3])
def test_class_count_answers_the_top_k_of_predict(
    door: str,
    k: int,
    clients: tuple[triton_http.InferenceServerClient, triton_grpc.InferenceServerClient],
    images: dict[str, list[bytes]],
    demo_server: ServerProcess,
) -> None:
    blobs = images["digits"]
    answer = _infer(door, clients, "digits", blobs, [Output("probabilities", class_count=k)], f"top{k}")
    strings = answer.outputs["probabilities"]
    assert strings.shape == (len(blobs), k)
    predicted = _predict(demo_server.url, "digits", blobs, top_k=k)["predictions"]
    for row, prediction in zip(strings, predicted, strict=True):
        texts = [s.decode() if isinstance(s, bytes) else s for s in row]
        parsed = [text.split(":") for text in texts]
        assert [(int(index), label) for _, index, label in parsed] == [
            (entry["class_index"], entry["label"]) for entry in prediction["top_k"]
        ]
        for (score, _, _), entry in zip(parsed, prediction["top_k"], strict=True):
            assert abs(float(score) - entry["score"]) <= 1e-6 + 1e-5, (texts, prediction["top_k"])


# --- malformed requests ------------------------------------------------------------------------


def _json_image_request(blob: bytes, **extra: Any) -> bytes:
    document = {
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(blob).decode()]}
        ],
        **extra,
    }
    return json.dumps(document).encode()


def _binary_request(header: dict[str, Any], binary: bytes) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header).encode()
    return text + binary, {"Inference-Header-Content-Length": str(len(text))}


def _image_tensor(data: list[Any], **changes: Any) -> dict[str, Any]:
    return {"name": "image", "datatype": "BYTES", "shape": [len(data)], "data": data, **changes}


def _rest_cases(digit: bytes) -> dict[str, tuple[bytes, dict[str, str], str]]:
    """name -> (body, headers, a word the error must contain)."""
    b64 = base64.b64encode(digit).decode()
    section = struct.pack("<I", len(digit)) + digit
    fp32 = {"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.0] * 3 * 32 * 32}

    def doc(**document: Any) -> bytes:
        return json.dumps(document).encode()

    truncated = _binary_request(
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                     "parameters": {"binary_data_size": len(section)}}]},
        section[: len(section) // 2],
    )  # fmt: skip
    return {
        "wrong input name": (doc(inputs=[_image_tensor([b64], name="picture")]), {}, "picture"),
        "wrong datatype": (doc(inputs=[_image_tensor([1.0], datatype="FP32")]), {}, "BYTES"),
        "shape disagrees with data": (doc(inputs=[_image_tensor([b64], shape=[2])]), {}, "elements"),
        "truncated binary section": (*truncated, "truncated"),
        "header length past the body": (doc(inputs=[]), {"Inference-Header-Content-Length": "9999"}, "9999"),
        "invalid JSON": (b'{"inputs": [', {}, "JSON"),
        "two inputs": (doc(inputs=[_image_tensor([b64]), _image_tensor([b64])]), {}, "send one input"),
        "unknown output": (doc(inputs=[_image_tensor([b64])], outputs=[{"name": "logits"}]), {}, "logits"),
        "FP32 of the wrong [C, H, W]": (doc(inputs=[fp32]), {}, "[N, 1, 32, 32]"),
        "non-base64 BYTES": (doc(inputs=[_image_tensor(["%%% not base64 %%%"])]), {}, "base64"),
        "image that does not decode": (
            doc(inputs=[_image_tensor([base64.b64encode(b"this is not an image").decode()])]),
            {},
            "image",
        ),
    }


def _assert_healthy(url: str, digit: bytes) -> None:
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    good = httpx.post(f"{url}/v2/models/digits/infer", content=_json_image_request(digit), timeout=30)
    assert good.status_code == 200, good.text
    assert good.json()["outputs"][1]["data"] == [3]


def test_malformed_rest_requests_are_400_naming_the_problem(
    demo_server: ServerProcess, images: dict[str, list[bytes]]
) -> None:
    digit = images["digits"][0]  # a 3
    for case, (body, headers, needle) in _rest_cases(digit).items():
        answer = httpx.post(f"{demo_server.url}/v2/models/digits/infer", content=body, headers=headers)
        assert answer.status_code == 400, (case, answer.text)
        error = answer.json()["error"]
        assert isinstance(error, str) and needle in error, (case, error)
        _assert_healthy(demo_server.url, digit)
    unknown = httpx.post(f"{demo_server.url}/v2/models/nope/infer", content=_json_image_request(digit))
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
    _assert_healthy(demo_server.url, digit)


def _grpc_image_request(model: str, *blobs: bytes) -> Any:
    return pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[len(blobs)])],
        raw_input_contents=[b"".join(struct.pack("<I", len(b)) + b for b in blobs)],
    )


def _grpc_cases(digit: bytes) -> dict[str, tuple[Any, grpc.StatusCode, str]]:
    tensor = pb.ModelInferRequest.InferInputTensor
    section = struct.pack("<I", len(digit)) + digit

    def request(*inputs: tuple[str, str, list[int], bytes], outputs: tuple[str, ...] = ()) -> Any:
        return pb.ModelInferRequest(
            model_name="digits",
            inputs=[tensor(name=n, datatype=d, shape=s) for n, d, s, _ in inputs],
            raw_input_contents=[raw for *_, raw in inputs],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=name) for name in outputs],
        )

    bad = grpc.StatusCode.INVALID_ARGUMENT
    image = ("image", "BYTES", [1], section)
    unclaimed = request(image)
    unclaimed.raw_input_contents.append(b"extra")
    return {
        "wrong input name": (request(("picture", "BYTES", [1], section)), bad, "picture"),
        "wrong datatype": (request(("image", "FP32", [1], b"\x00" * 4)), bad, "BYTES"),
        "shape disagrees with data": (request(("image", "BYTES", [2], section)), bad, "elements"),
        "truncated BYTES element": (request(("image", "BYTES", [1], section[:-10])), bad, "runs past"),
        "FP32 of the wrong length": (request(("input", "FP32", [1, 1, 32, 32], b"\x00" * 100)), bad, "bytes"),
        "two inputs": (request(image, image), bad, "send one input"),
        "raw contents not one per input": (unclaimed, bad, "one per input"),
        "unknown output": (request(image, outputs=("logits",)), bad, "logits"),
        "FP32 of the wrong [C, H, W]": (
            request(("input", "FP32", [1, 3, 32, 32], b"\x00" * 4 * 3 * 32 * 32)),
            bad,
            "[N, 1, 32, 32]",
        ),
        "image that does not decode": (
            request(("image", "BYTES", [1], struct.pack("<I", 4) + b"junk")),
            bad,
            "image",
        ),
        "unknown model": (_grpc_image_request("nope", digit), grpc.StatusCode.NOT_FOUND, "nope"),
    }


def test_malformed_grpc_requests_are_invalid_argument_naming_the_problem(
    demo_server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, images: dict[str, list[bytes]]
) -> None:
    digit = images["digits"][0]
    for case, (request, code, needle) in _grpc_cases(digit).items():
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(request, timeout=30)
        assert raised.value.code() == code, (case, raised.value.code(), raised.value.details())
        assert needle in (raised.value.details() or ""), (case, raised.value.details())
        good = stub.ModelInfer(_grpc_image_request("digits", digit), timeout=30)
        assert np.frombuffer(good.raw_output_contents[1], "<i8").tolist() == [3]
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
    _assert_healthy(demo_server.url, digit)


def test_tritonclient_reports_server_errors_as_its_exception(
    clients: tuple[triton_http.InferenceServerClient, triton_grpc.InferenceServerClient],
) -> None:
    """What a tritonclient user sees: the status and the server's message."""
    for door in ("rest-json", "grpc"):
        with pytest.raises(InferenceServerException) as raised:
            _infer(door, clients, "digits", np.zeros((1, 3, 32, 32), np.float32), [], "bad")
        assert "[N, 1, 32, 32]" in raised.value.message(), raised.value.message()
        assert raised.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")


# --- one batcher for every door ------------------------------------------------------------------

SLOW_ARCH = "tests.support.archs:slow_classifier"
SLOW_ARGS = {"delay_s": 1.0, "in_channels": 1, "num_classes": 3}


@dataclass(frozen=True)
class SlowServer:
    server: ServerProcess
    model: torch.nn.Module


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlowServer]:
    folder = tmp_path_factory.mktemp("v2batch")
    model = save_random_weights(SLOW_ARCH, SLOW_ARGS, folder / "slow.pt", seed=5)
    entry = model_entry(
        SLOW_ARCH, "slow.pt", init_args=SLOW_ARGS, batching={"max_batch_size": 16}, cpu_replicas=1
    )
    server = ServerProcess(write_config(folder, {"slow": entry}), folder / "server.log")
    with server:
        yield SlowServer(server, model)


def _batches_of_at_least_three(url: str) -> float:
    """Batches of 3 or more images run by the model ``slow`` (bucket ``le=2`` subtracted)."""
    count = small = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.labels.get("model") != "slow":
                continue
            if sample.name == "model_serve_batch_size_count":
                count = sample.value
            elif sample.name == "model_serve_batch_size_bucket" and float(sample.labels["le"]) == 2.0:
                small = sample.value
    return count - small


def test_predict_rest_and_grpc_requests_share_one_batch(slow_server: SlowServer) -> None:
    url = slow_server.server.url
    pictures = [png(10), png(60), png(130), png(250)]
    expected = reference_scores(slow_server.model, pictures)
    rest = httpx.Client(timeout=30)
    grpc_client = triton_grpc.InferenceServerClient(slow_server.server.grpc_address)
    assert rest.get(f"{url}/healthz").status_code == 200 and grpc_client.is_server_ready()  # connected
    answers: dict[str, Any] = {}

    def predict(i: int) -> list[float]:
        answer = rest.post(f"{url}/predict?model=slow&top_k=3", content=pictures[i], headers=PNG)
        assert answer.status_code == 200, answer.text
        scores = [0.0] * 3
        for entry in answer.json()["predictions"][0]["top_k"]:
            scores[entry["class_index"]] = entry["score"]
        return scores

    def v2_rest() -> list[float]:
        answer = rest.post(f"{url}/v2/models/slow/infer", content=_json_image_request(pictures[2]))
        assert answer.status_code == 200, answer.text
        data: list[float] = answer.json()["outputs"][0]["data"]
        return data

    def v2_grpc() -> list[float]:
        request = triton_grpc.InferInput("image", [1], "BYTES")
        request.set_data_from_numpy(np.array([pictures[3]], dtype=object))
        result = grpc_client.infer(
            "slow", [request], outputs=[triton_grpc.InferRequestedOutput("probabilities")]
        )
        rows: list[float] = result.as_numpy("probabilities")[0].tolist()
        return rows

    calls: dict[str, Callable[[], list[float]]] = {
        "occupier": lambda: predict(0),
        "predict": lambda: predict(1),
        "v2-rest": v2_rest,
        "v2-grpc": v2_grpc,
    }
    barrier = threading.Barrier(3)

    def run(name: str) -> None:
        if name != "occupier":
            barrier.wait(10)
        try:
            answers[name] = calls[name]()
        except BaseException as exc:  # reported by the assertion below
            answers[name] = exc

    before = _batches_of_at_least_three(url)
    threads = {name: threading.Thread(target=run, args=(name,), daemon=True) for name in calls}
    threads["occupier"].start()
    wait_until(lambda: httpx.get(f"{url}/models/slow").json()["replicas"][0]["busy"], 10, "the replica busy")
    for name in ("predict", "v2-rest", "v2-grpc"):
        threads[name].start()
    for thread in threads.values():
        thread.join(30)
    rest.close()
    grpc_client.close()
    for index, name in enumerate(calls):
        assert not isinstance(answers[name], BaseException), (name, answers[name])
        np.testing.assert_allclose(answers[name], expected[index], rtol=0, atol=1e-5, err_msg=name)
    assert _batches_of_at_least_three(url) - before >= 1, "the three doors' requests ran in separate batches"


def test_the_readme_tritonclient_example_runs_as_written(demo_server: ServerProcess) -> None:
    """The README's v2 example, pointed at this server's ports, prints the digit's class."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Open Inference Protocol (v2)", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    example = example.replace("127.0.0.1:8000", demo_server.url.removeprefix("http://"))
    example = example.replace("127.0.0.1:8081", demo_server.grpc_address)
    printed = subprocess.run(
        [sys.executable, "-c", example],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert printed[0].startswith("[[b'") and ":7:7'" in printed[0]
    assert printed[1].endswith("True")
