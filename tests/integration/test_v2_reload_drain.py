"""v2 clients through a hot reload and through a SIGTERM drain: nothing fails, nothing mixes.

The reload test swaps model ``m`` between two checkpoints A and B while v2 REST and gRPC
clients send; every answer's ``model_version`` must name the version whose in-process
reference its probabilities equal, so a mixed or mislabelled answer fails, not only an error.
"""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from tests.support.harness import ADMIN, model_entry, png, save_random_weights, write_config
from tests.support.loadgen import arrived_and_in_flight, file_version, reference_scores, wait_until
from tests.support.serving import ServerProcess

ARCH = "tests.support.archs:slow_classifier"
ARGS = {"delay_s": 0.003, "in_channels": 1, "num_classes": 3}
IMAGES = [png(v) for v in (0, 70, 140, 255)] + [png(None, seed=3), png(None, size=(33, 7), seed=4)]
LOAD_S = 5.0
RELOAD_EVERY_S = 0.3


@dataclass(frozen=True)
class Answered:
    """One answer of the load: which door, which image, the version and scores it reported."""

    door: str
    image: int
    version: str | None
    scores: list[float] | None
    error: str | None = None


@dataclass(frozen=True)
class Reloading:
    server: ServerProcess
    versions: dict[str, str]  # checkpoint file -> version
    refs: dict[str, list[list[float]]]  # version -> per image probabilities


@pytest.fixture(scope="module")
def reloading(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reloading]:
    base = tmp_path_factory.mktemp("v2reload")
    versions, refs = {}, {}
    for name, seed in (("a.pt", 1), ("b.pt", 2)):
        model = save_random_weights(ARCH, ARGS, base / "ckpt" / name, seed=seed)
        versions[name] = file_version(base / "ckpt" / name)
        refs[versions[name]] = reference_scores(model, IMAGES)
    a, b = (np.array(refs[versions[name]]) for name in ("a.pt", "b.pt"))
    assert (np.abs(a - b).max(axis=1) > 1e-3).all(), "the versions must differ on every image"
    entry = model_entry(ARCH, "ckpt/a.pt", init_args=ARGS, batching={"max_batch_size": 4})
    config = write_config(base, {"m": entry}, checkpoint_root="ckpt")
    server = ServerProcess(config, base / "server.log")
    with server:
        yield Reloading(server, versions, refs)


def _rest_loop(client: httpx.Client, url: str) -> Callable[[int], Answered]:
    def send(i: int) -> Answered:
        image = i % len(IMAGES)
        body = {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "data": [base64.b64encode(IMAGES[image]).decode()],
                }
            ],
            "outputs": [{"name": "probabilities"}],
        }
        answer = client.post(f"{url}/v2/models/m/infer", content=json.dumps(body))
        if answer.status_code != 200:
            return Answered("rest", image, None, None, f"{answer.status_code} {answer.text[:200]}")
        document = answer.json()
        return Answered("rest", image, document["model_version"], document["outputs"][0]["data"])

    return send


def _grpc_loop(client: triton_grpc.InferenceServerClient) -> Callable[[int], Answered]:
    def send(i: int) -> Answered:
        image = i % len(IMAGES)
        request = triton_grpc.InferInput("image", [1], "BYTES")
        request.set_data_from_numpy(np.array([IMAGES[image]], dtype=object))
        try:
            result = client.infer(
                "m", [request], outputs=[triton_grpc.InferRequestedOutput("probabilities")], client_timeout=10
            )
        except InferenceServerException as exc:
            return Answered("grpc", image, None, None, f"{exc.status()} {exc.message()}")
        scores = result.as_numpy("probabilities")[0].tolist()
        return Answered("grpc", image, result.get_response().model_version, scores)

    return send


def _load(senders: list[Callable[[int], Answered]], seconds: float, stop: threading.Event) -> list[Answered]:
    """Each sender in its own thread until ``seconds`` pass or ``stop`` is set."""
    answers: list[Answered] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def loop(send: Callable[[int], Answered], offset: int) -> None:
        i = offset
        while not stop.is_set() and time.monotonic() < deadline:
            answer = send(i)
            with lock:
                answers.append(answer)
            i += 1

    threads = [threading.Thread(target=loop, args=(send, n), daemon=True) for n, send in enumerate(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 20)
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    return answers


def test_v2_answers_through_reloads_never_fail_or_mix_versions(reloading: Reloading) -> None:
    server = reloading.server
    rest = [httpx.Client(timeout=10) for _ in range(2)]
    grpc = [triton_grpc.InferenceServerClient(server.grpc_address) for _ in range(2)]
    senders = [_rest_loop(client, server.url) for client in rest] + [_grpc_loop(client) for client in grpc]
    stop = threading.Event()
    reloads: list[str] = []

    def reloader() -> None:
        deadline = time.monotonic() + LOAD_S - 0.5
        swap = 0
        while time.monotonic() < deadline and not stop.is_set():
            target = "b.pt" if swap % 2 == 0 else "a.pt"
            answer = httpx.post(
                f"{server.url}/models/m/reload", json={"checkpoint": target}, headers=ADMIN, timeout=30
            )
            reloads.append(f"{answer.status_code} {answer.text[:200]}")
            if answer.status_code != 200 or answer.json()["version"] != reloading.versions[target]:
                stop.set()
                return
            swap += 1
            time.sleep(RELOAD_EVERY_S)  # pacing: reloads spread over the load, not a wait

    swapping = threading.Thread(target=reloader, daemon=True)
    swapping.start()
    answers = _load(senders, LOAD_S, stop)
    swapping.join(30)
    for client in [*rest, *grpc]:
        client.close()

    assert all(line.startswith("200") for line in reloads), reloads
    assert len(reloads) >= 6, f"only {len(reloads)} reloads under load"
    failed = [a for a in answers if a.error is not None]
    assert not failed, f"{len(failed)} of {len(answers)} failed, e.g. {failed[:3]}"
    seen = set()
    for answer in answers:
        assert answer.version in reloading.refs, answer
        assert answer.scores is not None
        seen.add((answer.door, answer.version))
        expected = reloading.refs[answer.version][answer.image]
        assert np.allclose(answer.scores, expected, rtol=0, atol=1e-5), (
            f"{answer.door} reports {answer.version} for image {answer.image} but scored {answer.scores}, "
            f"that version gives {expected}"
        )
    both = set(reloading.refs)
    assert seen == {(door, v) for door in ("rest", "grpc") for v in both}, seen
    print(f"{len(answers)} v2 answers through {len(reloads)} reloads")


# --- SIGTERM with gRPC calls in flight ----------------------------------------------------------

DELAY_S = 0.3
GRACE_S = 10.0
CALLS = 6


def test_sigterm_answers_every_grpc_call_in_flight_and_exits_zero(tmp_path: Path) -> None:
    """All ``CALLS`` calls reach the server before the signal, so every one must be answered
    200 with its correct scores; a call made after draining began must get UNAVAILABLE."""
    args = {"delay_s": DELAY_S}
    model = save_random_weights(ARCH, args, tmp_path / "s.pt")
    entry = model_entry(ARCH, "s.pt", init_args=args, batching={"max_batch_size": 1})
    config = write_config(tmp_path, {"slow": entry}, server={"drain_grace_s": GRACE_S})
    pictures = [png(i * 40) for i in range(CALLS)]
    expected = reference_scores(model, pictures)

    with ServerProcess(config, tmp_path / "server.log") as server:
        clients = [triton_grpc.InferenceServerClient(server.grpc_address) for _ in range(CALLS)]
        assert all(client.is_server_ready() for client in clients)  # connected before the burst
        results: list[object] = ["not answered"] * CALLS

        def call(i: int) -> None:
            request = triton_grpc.InferInput("image", [1], "BYTES")
            request.set_data_from_numpy(np.array([pictures[i]], dtype=object))
            try:
                result = clients[i].infer("slow", [request], client_timeout=GRACE_S + 5)
                results[i] = result.as_numpy("probabilities")[0].tolist()
            except InferenceServerException as exc:
                results[i] = f"{exc.status()} {exc.message()}"

        threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(CALLS)]
        for thread in threads:
            thread.start()

        def all_arrived() -> bool:
            arrived, in_flight = arrived_and_in_flight(server.url, "slow")
            assert arrived < CALLS or in_flight >= CALLS - 2, "the calls finished before the signal"
            return arrived >= CALLS

        wait_until(all_arrived, 10, f"{CALLS} gRPC calls in flight")
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: "draining" in server.log(), 5, "the server logs that it drains")

        late = triton_grpc.InferenceServerClient(server.grpc_address)
        request = triton_grpc.InferInput("image", [1], "BYTES")
        request.set_data_from_numpy(np.array([pictures[0]], dtype=object))
        with pytest.raises(InferenceServerException) as refused:
            late.infer("slow", [request], client_timeout=5)
        for thread in threads:
            thread.join(GRACE_S + 10)
        code = server.process.wait(GRACE_S + 5)
        exited_after_s = time.monotonic() - signalled
        for client in [*clients, late]:
            client.close()

    for i, result in enumerate(results):
        assert isinstance(result, list), f"call {i} in flight at SIGTERM got {result!r}"
        assert np.allclose(result, expected[i], rtol=0, atol=1e-5), (i, result, expected[i])
    assert refused.value.status() == "StatusCode.UNAVAILABLE", refused.value.message()
    assert exited_after_s < GRACE_S, exited_after_s
    assert code == 0, f"exit status {code} after a graceful drain:\n{server.log()[-2000:]}"
