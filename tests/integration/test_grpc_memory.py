"""gRPC messages within the body budget, against a real server (issue 24 row 1, scaled down
with the budgets: 30 concurrent messages instead of 100 of 19 MB).

A burst of messages over ``max_body_bytes``, and one of messages that fit alone but not beside
a call holding most of ``max_inflight_body_bytes``, are each refused RESOURCE_EXHAUSTED with a
message that says why; the server's resident memory comes back near idle after the burst, and
``/v2/health/ready`` keeps answering quickly while it runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from tests.support.harness import model_entry, save_random_weights, write_config
from tests.support.loadgen import arrived_and_in_flight
from tests.support.memory import memory_mb
from tests.support.serving import ServerProcess
from tests.support.waiting import wait_until

ARCH = "tests.support.archs:slow_classifier"
HOLD_S = 3.0  # how long the call that holds the budget takes (one batch)
ARGS = {"delay_s": HOLD_S, "in_channels": 1, "num_classes": 3}
MiB = 1 << 20
BODY_LIMIT = BUDGET = 16 * MiB
HOLDER_BYTES = 12 * MiB  # of the 16: one image and a parameter nothing reads
BURST = 30
# Resident memory after a burst, above idle: measured 10-30 MB here; before, the refused and
# failed calls' messages stayed referenced (grpc's reference cycles) and in glibc's heaps.
AFTER_BURST_MB = 100
READY_WITHIN_S = 1.0  # the slowest /v2/health/ready answer while a burst runs


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("grpc_memory")
    save_random_weights(ARCH, ARGS, base / "m.pt")
    entry = model_entry(ARCH, "m.pt", init_args=ARGS, cpu_replicas=1, batching={"max_batch_size": 1})
    limits = {"max_body_bytes": BODY_LIMIT, "max_inflight_body_bytes": BUDGET, "request_timeout_s": 60}
    with ServerProcess(write_config(base, {"m": entry}, server=limits), base / "server.log") as running:
        yield running


def _image_message(size: int) -> bytes:
    """A serialised ModelInferRequest of about ``size`` bytes: one ``image`` element that is
    not an image (refused once parsed, if it ever is)."""
    element = b"\x89PNG" + b"\0" * (size - 4)
    tensor = pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])
    raw = len(element).to_bytes(4, "little") + element
    return pb.ModelInferRequest(model_name="m", inputs=[tensor], raw_input_contents=[raw]).SerializeToString()


def _tensor_message(padding: int = 0) -> bytes:
    """One valid input tensor, and ``padding`` bytes in a request parameter."""
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 1, 16, 16])
    raw = np.zeros((1, 1, 16, 16), dtype=np.float32).tobytes()
    pad = {"padding": pb.InferParameter(string_param="x" * padding)}
    request = pb.ModelInferRequest(model_name="m", inputs=[tensor], raw_input_contents=[raw], parameters=pad)
    return request.SerializeToString()


def _sender(server: ServerProcess) -> Callable[[bytes], tuple[str, str]]:
    """Sends a serialised request on a channel of its own; (code name, details)."""
    options = [("grpc.max_send_message_length", 4 * BODY_LIMIT), ("grpc.max_receive_message_length", -1)]

    def send(message: bytes) -> tuple[str, str]:
        with grpc.insecure_channel(server.grpc_address, options=options) as channel:
            infer = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=lambda raw: raw,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            try:
                infer(message, timeout=60)
            except grpc.RpcError as error:
                return error.code().name, error.details() or ""
            return "OK", ""

    return send


def _burst(server: ServerProcess, message: bytes) -> tuple[dict[tuple[str, str], int], float]:
    """``BURST`` concurrent calls of ``message``: their outcomes counted, and the slowest
    ``/v2/health/ready`` answer while they ran."""
    send, slowest, done = _sender(server), [0.0], threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while not done.is_set():
                started = time.monotonic()
                assert client.get("/v2/health/ready").status_code == 200
                slowest[0] = max(slowest[0], time.monotonic() - started)
                done.wait(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with ThreadPoolExecutor(BURST) as pool:
            outcomes = list(pool.map(send, [message] * BURST))
    finally:
        done.set()
        prober.join()
    return {outcome: outcomes.count(outcome) for outcome in set(outcomes)}, slowest[0]


def _settles_near(server: ServerProcess, idle_mb: float) -> None:
    """The memory comes back (the heap is trimmed on a worker thread after the last message)."""
    pid = server.process.pid
    what = f"RSS within {AFTER_BURST_MB} MB of idle ({idle_mb:.0f} MB)"
    wait_until(lambda: memory_mb(pid) < idle_mb + AFTER_BURST_MB, 10, what)
    print(f"RSS idle {idle_mb:.0f} MB, after the burst {memory_mb(pid):.0f} MB")


@pytest.fixture
def idle_mb(server: ServerProcess) -> float:
    """The server's RSS after one answered call and one refused burst (each grpc thread's
    first allocations are not the burst's to give back)."""
    assert _sender(server)(_tensor_message()) == ("OK", "")
    _burst(server, _image_message(BODY_LIMIT // 4))
    return memory_mb(server.process.pid)


def test_messages_over_the_body_limit_are_refused_unread(server: ServerProcess, idle_mb: float) -> None:
    counts, slowest_s = _burst(server, _image_message(BODY_LIMIT + MiB))
    ((code, message),) = counts  # one outcome for all
    assert code == "RESOURCE_EXHAUSTED" and counts[code, message] == BURST, counts
    assert "larger than max" in message and str(BODY_LIMIT) in message, message
    assert slowest_s < READY_WITHIN_S, slowest_s
    _settles_near(server, idle_mb)


def test_messages_past_the_budget_beside_a_call_holding_it_are_refused(
    server: ServerProcess, idle_mb: float
) -> None:
    send = _sender(server)
    held: list[tuple[str, str]] = []
    holder = threading.Thread(target=lambda: held.append(send(_tensor_message(HOLDER_BYTES))))
    holder.start()
    wait_until(lambda: arrived_and_in_flight(server.url, "m")[1] >= 1, 10, "the holding call in flight")
    counts, slowest_s = _burst(server, _image_message(6 * MiB))  # fits alone: 6 + 12 > 16 MiB
    assert arrived_and_in_flight(server.url, "m")[1] >= 1, "the holder ended before the burst did"
    holder.join(HOLD_S + 30)
    ((code, message),) = counts
    assert code == "RESOURCE_EXHAUSTED" and counts[code, message] == BURST, counts
    assert message.startswith("the server is busy: requests in flight hold"), message
    assert f"of {BUDGET} body bytes; retry after 1 s" in message, message
    assert held == [("OK", "")]
    assert slowest_s < READY_WITHIN_S, slowest_s
    _settles_near(server, idle_mb)
