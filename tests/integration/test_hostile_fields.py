"""Hostile fields against a real server: names that would forge log lines, numbers that are not
numbers, shapes no array can have, bytes that are no protobuf, an empty reload path.

Each gets a 4xx (gRPC: INVALID_ARGUMENT) with a message and no internals; no ERROR line or
traceback reaches the log; every log line stays one line, in text and in JSON.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import grpc
import httpx
import numpy as np
import pytest

from tests.support.harness import ADMIN, model_entry, png, save_random_weights, write_config
from tests.support.loadgen import PNG
from tests.support.serving import ServerProcess

ARCH = "tests.support.archs:pooled"
FORGED = "m\n2026-01-01 00:00:00,000 INFO service.audit [-] reload m success\x1b[2J"


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _server(tmp_path_factory: pytest.TempPathFactory, log_format: str) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp(f"fields-{log_format}")
    save_random_weights(ARCH, {}, folder / "m.pt")
    config = write_config(folder, {"m": model_entry(ARCH, "m.pt")}, server={"log_format": log_format})
    with ServerProcess(config, folder / "server.log") as process:
        yield process


@pytest.fixture(scope="module")
def text_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _server(tmp_path_factory, "text")


@pytest.fixture(scope="module")
def json_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _server(tmp_path_factory, "json")


def _forge(server: ServerProcess) -> None:
    """A predict, a v2 infer and an unauthenticated reload, each naming the forged model."""
    answer = httpx.post(f"{server.url}/predict", params={"model": FORGED}, content=png(), headers=PNG)
    assert answer.status_code == 404
    quoted = httpx.URL(f"{server.url}/v2/models/x").copy_with(raw_path=b"/v2/models/m%0Aforged%1B/infer")
    assert httpx.post(quoted, json={"inputs": []}).status_code == 404
    reload = httpx.URL(server.url).copy_with(raw_path=b"/models/m%0Aforged%1B/reload")
    assert httpx.post(reload).status_code == 401


def test_text_lines_escape_every_field_a_client_names(text_server: ServerProcess) -> None:
    _forge(text_server)
    wait_until(lambda: "service.audit" in text_server.log() and "forged" in text_server.log(), 10, "audit")
    wait_until(lambda: text_server.log().count("service.access") >= 3, 10, "three access lines")
    lines = text_server.log().splitlines()
    assert not [line for line in lines if "\x1b" in line]
    assert not [line for line in lines if line.startswith("2026-01-01")], "a forged line"
    escaped = [line for line in lines if "\\n2026-01-01" in line or "m\\nforged\\x1b" in line]
    assert len(escaped) >= 3, "\n".join(lines[-20:])


def test_json_lines_stay_one_object_each_with_the_raw_name(json_server: ServerProcess) -> None:
    _forge(json_server)
    wait_until(lambda: json_server.log().count('"service.access"') >= 3, 10, "three access lines")
    wait_until(lambda: '"service.audit"' in json_server.log(), 10, "the audit line")
    entries = [json.loads(line) for line in json_server.log().splitlines() if line.startswith("{")]
    models = {entry.get("model") for entry in entries}
    assert FORGED in models  # the exact name, escaped by JSON, not lost
    assert not [line for line in json_server.log().splitlines() if line.startswith("2026-01-01")]


def test_a_header_length_that_is_no_ascii_number_is_a_400(text_server: ServerProcess) -> None:
    body = json.dumps({"inputs": []}).encode()
    # b"\xb2" is "²" to a server reading headers as latin-1: str.isdigit() says yes, int() no
    for length in (b"\xb2", "١٢".encode(), b"-1", b"12a", b"\xb9\xb2"):
        answer = httpx.post(
            f"{text_server.url}/v2/models/m/infer",
            content=body,
            headers=[(b"Inference-Header-Content-Length", length), (b"Content-Type", b"application/json")],
        )
        assert answer.status_code == 400, (length, answer.text)
        assert "Inference-Header-Content-Length" in answer.json()["error"]
    assert "ERROR" not in text_server.log()


def test_a_shape_no_array_can_have_is_a_400(text_server: ServerProcess) -> None:
    for shape in ([0, 2**40, 2**40], [1, 2**62], [1] * 40):
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": []}]}
        answer = httpx.post(f"{text_server.url}/v2/models/m/infer", json=body)
        assert answer.status_code == 400, (shape, answer.text)
        sized = {"name": "input", "datatype": "FP32", "shape": shape, "parameters": {"binary_data_size": 0}}
        binary = {"inputs": [sized]}
        header = json.dumps(binary).encode()
        answer = httpx.post(
            f"{text_server.url}/v2/models/m/infer",
            content=header,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert answer.status_code == 400, (shape, answer.text)
    assert "ERROR" not in text_server.log()
    assert httpx.get(f"{text_server.url}/healthz").status_code == 200


def test_bytes_that_are_no_protobuf_are_invalid_argument(text_server: ServerProcess) -> None:
    with grpc.insecure_channel(text_server.grpc_address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for payload in (b"\xff\xff\xff", b"\x0a\x05ab", b"\x0a\x02\xc3\x28"):
            with pytest.raises(grpc.RpcError) as raised:
                infer(payload, timeout=10)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details = raised.value.details() or ""
            assert "ModelInferRequest" in details and "DecodeError" not in details
    assert "Traceback" not in text_server.log() and "ERROR" not in text_server.log()
    # a well-formed call still answers
    from tritonclient import grpc as triton

    tensor = triton.InferInput("input", [1, 1, 16, 16], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1, 16, 16), np.float32))
    with triton.InferenceServerClient(text_server.grpc_address) as client:
        assert client.infer("m", [tensor]).as_numpy("class_index").shape == (1,)


def test_an_empty_reload_path_is_a_422_and_nothing_reloads(text_server: ServerProcess) -> None:
    before = httpx.get(f"{text_server.url}/models/m").json()
    for path in ("", "   "):
        answer = httpx.post(f"{text_server.url}/models/m/reload", json={"checkpoint": path}, headers=ADMIN)
        assert answer.status_code == 422, answer.text
        assert "empty" in answer.json()["error"]["message"]
    after = httpx.get(f"{text_server.url}/models/m").json()
    assert (after["version"], after["loaded_at"]) == (before["version"], before["loaded_at"])
