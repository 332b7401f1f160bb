"""gRPC ``ModelStreamInfer`` with tritonclient's streams (sync ``start_stream`` and aio
``stream_infer``) against a real server: every request answered as a unary call would be, an
error in one is that request's ``error_message`` and the stream goes on, a reload during a
stream loses nothing, and a cancelled stream cancels what it holds.

Answers are compared with the in-process model of the version each reports.
"""

from __future__ import annotations

import queue
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from tests.support.harness import ADMIN, model_entry, png, save_random_weights, write_config
from tests.support.loadgen import file_version, reference_scores
from tests.support.serving import ServerProcess
from tests.support.waiting import wait_until

ARCH = "tests.support.archs:slow_classifier"
ARGS = {"delay_s": 0.003, "in_channels": 1, "num_classes": 3}
SLOW = {"delay_s": 0.5, "in_channels": 1, "num_classes": 3}
IMAGES = [png(v) for v in (0, 60, 120, 180, 255)] + [png(None, seed=5)]


@dataclass(frozen=True)
class Streaming:
    server: ServerProcess
    versions: dict[str, str]  # checkpoint file -> version
    refs: dict[str, list[list[float]]]  # version -> per image probabilities


@pytest.fixture(scope="module")
def streaming(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Streaming]:
    base = tmp_path_factory.mktemp("v2stream")
    versions, refs = {}, {}
    for name, seed in (("a.pt", 1), ("b.pt", 2)):
        model = save_random_weights(ARCH, ARGS, base / "ckpt" / name, seed=seed)
        versions[name] = file_version(base / "ckpt" / name)
        refs[versions[name]] = reference_scores(model, IMAGES)
    save_random_weights(ARCH, SLOW, base / "ckpt" / "slow.pt")
    models = {
        "m": model_entry(ARCH, "ckpt/a.pt", init_args=ARGS, batching={"max_batch_size": 4}),
        "slow": model_entry(ARCH, "ckpt/slow.pt", init_args=SLOW, batching={"max_batch_size": 1}),
    }
    config = write_config(base, models, checkpoint_root="ckpt")
    with ServerProcess(config, base / "server.log") as server:
        yield Streaming(server, versions, refs)


@pytest.fixture
def client(streaming: Streaming) -> Iterator[triton_grpc.InferenceServerClient]:
    client = triton_grpc.InferenceServerClient(streaming.server.grpc_address)
    yield client
    client.close()


def _inputs(image: bytes) -> list[triton_grpc.InferInput]:
    request = triton_grpc.InferInput("image", [1], "BYTES")
    request.set_data_from_numpy(np.array([image], dtype=object))
    return [request]


OUTPUTS = [triton_grpc.InferRequestedOutput("probabilities")]


def _send(client: triton_grpc.InferenceServerClient, number: int) -> None:
    """Request ``number`` on the client's stream: image ``number % len(IMAGES)``, id ``number``."""
    image = IMAGES[number % len(IMAGES)]
    client.async_stream_infer("m", _inputs(image), outputs=OUTPUTS, request_id=str(number))


class Collected:
    """The stream's callback: every (result, error) it is handed, in arrival order."""

    def __init__(self) -> None:
        self.answers: queue.Queue[tuple[Any, InferenceServerException | None]] = queue.Queue()
        self.seen: list[tuple[Any, InferenceServerException | None]] = []

    def __call__(self, result: Any, error: InferenceServerException | None) -> None:
        self.answers.put((result, error))

    def wait_for(self, count: int) -> list[tuple[Any, InferenceServerException | None]]:
        def arrived() -> bool:
            while not self.answers.empty():
                self.seen.append(self.answers.get_nowait())
            return len(self.seen) >= count

        wait_until(arrived, 60, f"{count} streamed answers")
        return self.seen


def _check(streaming: Streaming, result: Any) -> tuple[int, str]:
    """(the request's number, the version) of a correct answer; fails on a wrong one."""
    response = result.get_response()
    number, version = int(response.id), response.model_version
    expected = streaming.refs[version][number % len(IMAGES)]
    scores = result.as_numpy("probabilities")[0]
    assert np.allclose(scores, expected, rtol=0, atol=1e-5), (number, version, scores, expected)
    return number, version


def _samples(streaming: Streaming, name: str, **labels: str) -> float:
    text = httpx.get(f"{streaming.server.url}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def test_fifty_requests_on_one_stream_are_all_answered_correctly(
    streaming: Streaming, client: triton_grpc.InferenceServerClient
) -> None:
    answered_before = _samples(streaming, "model_serve_requests_total", model="m", code="200")
    collected = Collected()
    client.start_stream(collected)
    for number in range(50):
        _send(client, number)
    answers = collected.wait_for(50)
    client.stop_stream()
    assert all(error is None for _, error in answers), [e for _, e in answers if e is not None][:3]
    numbers = sorted(_check(streaming, result)[0] for result, _ in answers)
    assert numbers == list(range(50))
    # the same accounting and access lines as unary calls
    answered = _samples(streaming, "model_serve_requests_total", model="m", code="200")
    assert answered - answered_before == 50
    wait_until(
        lambda: streaming.server.log().count("gRPC ModelStreamInfer OK (200)") >= 50, 10, "50 access lines"
    )


def test_a_bad_request_gets_its_error_and_the_stream_goes_on(
    streaming: Streaming, client: triton_grpc.InferenceServerClient
) -> None:
    collected = Collected()
    client.start_stream(collected)
    for number in range(21):
        image = b"not an image at all" if number == 10 else IMAGES[number % len(IMAGES)]
        client.async_stream_infer("m", _inputs(image), outputs=OUTPUTS, request_id=str(number))
    client.async_stream_infer("nope", _inputs(IMAGES[0]), request_id="unknown")
    answers = collected.wait_for(22)
    client.stop_stream()
    errors = [error for _, error in answers if error is not None]
    assert len(errors) == 2, errors
    messages = sorted(error.message() for error in errors)
    assert "image" in messages[1] and "nope" in messages[0], messages
    numbers = sorted(_check(streaming, result)[0] for result, error in answers if error is None)
    assert numbers == [n for n in range(21) if n != 10]


def test_a_reload_during_a_stream_loses_nothing(
    streaming: Streaming, client: triton_grpc.InferenceServerClient
) -> None:
    collected = Collected()
    client.start_stream(collected)
    for number in range(60):
        if number == 30:
            collected.wait_for(10)
            url = f"{streaming.server.url}/models/m/reload"
            reload = httpx.post(url, json={"checkpoint": "b.pt"}, headers=ADMIN, timeout=60)
            assert reload.status_code == 200, reload.text
        _send(client, number)
    answers = collected.wait_for(60)
    client.stop_stream()
    back = httpx.post(f"{streaming.server.url}/models/m/reload", json={"checkpoint": "a.pt"}, headers=ADMIN)
    assert back.status_code == 200, back.text
    assert all(error is None for _, error in answers)
    checked = [_check(streaming, result) for result, _ in answers]
    assert sorted(number for number, _ in checked) == list(range(60))
    assert {version for _, version in checked} == set(streaming.refs), "both versions answered"
    after = [v for n, v in checked if n >= 30]
    assert set(after) == {streaming.versions["b.pt"]}, "requests sent after the reload use the new version"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_aio_client_streams_too(streaming: Streaming) -> None:
    async def requests() -> AsyncIterator[dict[str, Any]]:
        for number in range(20):
            inputs = [triton_aio.InferInput("image", [1], "BYTES")]
            inputs[0].set_data_from_numpy(np.array([IMAGES[number % len(IMAGES)]], dtype=object))
            outputs = [triton_aio.InferRequestedOutput("probabilities")]
            yield {"model_name": "m", "inputs": inputs, "outputs": outputs, "request_id": str(number)}

    async with triton_aio.InferenceServerClient(streaming.server.grpc_address) as client:
        numbers = []
        async for result, error in client.stream_infer(requests(), stream_timeout=60):
            assert error is None, error
            numbers.append(_check(streaming, result)[0])
            if len(numbers) == 20:
                break
    assert sorted(numbers) == list(range(20))


def test_a_stream_holds_at_most_its_window_and_cancelling_it_cancels_what_it_holds(
    streaming: Streaming, client: triton_grpc.InferenceServerClient
) -> None:
    """``slow`` answers one image per half second and the window is 4 (``m``'s
    ``max_batch_size``): of 8 requests sent at once, 4 are in flight until the first answer,
    the rest wait unread. Cancelling then counts each request the server holds as 499 (as a
    hang-up does), and the ones it never read never reach it."""
    cancelled_before = _samples(streaming, "model_serve_requests_total", model="slow", code="499")
    answered_before = _samples(streaming, "model_serve_requests_total", model="slow", code="200")
    collected = Collected()
    client.start_stream(collected)
    for number in range(8):
        client.async_stream_infer("slow", _inputs(IMAGES[0]), request_id=str(number))
    wait_until(
        lambda: _samples(streaming, "model_serve_in_flight_requests", model="slow") == 4, 10, "4 in flight"
    )
    collected.wait_for(1)
    assert _samples(streaming, "model_serve_in_flight_requests", model="slow") <= 4
    client.stop_stream(cancel_requests=True)

    wait_until(
        lambda: _samples(streaming, "model_serve_in_flight_requests", model="slow") == 0, 10, "none in flight"
    )
    cancelled = _samples(streaming, "model_serve_requests_total", model="slow", code="499") - cancelled_before
    answered = _samples(streaming, "model_serve_requests_total", model="slow", code="200") - answered_before
    assert cancelled >= 3, f"only {cancelled} requests were cancelled"
    assert answered + cancelled < 8, "requests past the window were read before there was room"
    assert streaming.server.log().count("gRPC ModelStreamInfer CANCELLED") >= 3


def test_a_message_that_does_not_parse_ends_the_stream_with_invalid_argument(
    streaming: Streaming, client: triton_grpc.InferenceServerClient
) -> None:
    with grpc.insecure_channel(streaming.server.grpc_address) as channel:
        call = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=lambda raw: raw,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as refused:
            list(call(iter([b"\xff\xff\xff not protobuf"]), timeout=10))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest" in (refused.value.details() or "")
    assert "Traceback" not in streaming.server.log()
    collected = Collected()
    client.start_stream(collected)
    _send(client, 0)
    ((result, error),) = collected.wait_for(1)
    client.stop_stream()
    assert error is None and _check(streaming, result) == (0, streaming.versions["a.pt"])
