"""Triton's model configuration and statistics extensions, read by real tritonclient clients.

The configuration is what perf_analyzer and Triton's dashboards read first (one default input,
the other optional; the batch dimension in ``max_batch_size``); the statistics count exactly the
requests and batches this test sends, agree between the two doors and with ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_grpc_aio
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_http_aio
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.support.harness import model_entry, png, save_random_weights, write_config
from tests.support.serving import ServerProcess

ARCH = "tests.support.archs:slow_classifier"
ARGS = {"delay_s": 0.002, "in_channels": 1, "num_classes": 3}
MAX_BATCH = 4


@dataclass(frozen=True)
class Clients:
    server: ServerProcess
    http: triton_http.InferenceServerClient
    grpc: triton_grpc.InferenceServerClient


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clients]:
    base = tmp_path_factory.mktemp("v2stats")
    save_random_weights(ARCH, ARGS, base / "m.pt", seed=4)
    entry = model_entry(ARCH, "m.pt", init_args=ARGS, batching={"max_batch_size": MAX_BATCH})
    config = write_config(base, {"m": entry})
    with ServerProcess(config, base / "server.log") as server:
        http = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
        grpc = triton_grpc.InferenceServerClient(server.grpc_address)
        yield Clients(server, http, grpc)
        http.close()
        grpc.close()


def _image_input(module: Any, count: int) -> Any:
    blobs = np.array([png(None, seed=seed) for seed in range(count)], dtype=np.object_)
    tensor = module.InferInput("image", [count], "BYTES")
    tensor.set_data_from_numpy(blobs)
    return tensor


def _statistics(clients: Clients) -> dict[str, Any]:
    """``m``'s statistics from the HTTP door, checked equal to the gRPC door's."""
    over_http = clients.http.get_inference_statistics("m")
    over_grpc = clients.grpc.get_inference_statistics("m", as_json=True)
    (stats,) = over_http["model_stats"]
    (grpc_stats,) = over_grpc["model_stats"]
    assert _counts(grpc_stats) == _counts(stats)
    return stats


def _counts(stats: dict[str, Any]) -> dict[str, Any]:
    """The counts of a statistics entry as numbers (gRPC's JSON writes uint64 as strings and
    leaves zeros out), durations aside: they move between two reads."""
    inference = stats["inference_stats"]
    return {
        "inference_count": int(stats.get("inference_count", 0)),
        "execution_count": int(stats.get("execution_count", 0)),
        **{phase: int(inference.get(phase, {}).get("count", 0)) for phase in ("success", "fail", "queue")},
        "batches": {
            int(b["batch_size"]): int(b["compute_infer"].get("count", 0))
            for b in stats.get("batch_stats", [])
        },
    }


def _batch_metrics(clients: Clients) -> tuple[float, float]:
    """``model_serve_batch_size``'s count and sum for ``m``: batches and images."""
    text = httpx.get(f"{clients.server.url}/metrics", timeout=10).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "model_serve_batch_size":
            for sample in family.samples:
                if sample.labels.get("model") == "m" and sample.name.endswith(("_count", "_sum")):
                    values[sample.name.rsplit("_", 1)[1]] = sample.value
    return values["count"], values["sum"]


def test_the_config_has_one_default_input_and_is_the_same_on_both_doors(clients: Clients) -> None:
    config = clients.http.get_model_config("m")
    assert clients.grpc.get_model_config("m", as_json=True)["config"]["name"] == "m"
    assert config["name"] == "m"
    assert config["platform"] == "pytorch"
    assert config["max_batch_size"] == MAX_BATCH
    inputs = {tensor["name"]: tensor for tensor in config["input"]}
    assert inputs["image"]["data_type"] == "TYPE_STRING"
    assert inputs["image"]["dims"] == [1]
    assert not inputs["image"].get("optional", False)
    assert inputs["input"]["data_type"] == "TYPE_FP32"
    assert inputs["input"]["dims"] == [1, 16, 16]
    assert inputs["input"]["optional"] is True
    assert "max_queue_delay_microseconds" in config["dynamic_batching"]
    assert [group["kind"] for group in config["instance_group"]] == ["KIND_CPU"]
    over_grpc = clients.grpc.get_model_config("m", as_json=True)["config"]
    assert {tensor["name"] for tensor in over_grpc["input"]} == set(inputs)
    assert {tensor["name"] for tensor in over_grpc["output"]} == {t["name"] for t in config["output"]}
    assert int(over_grpc["max_batch_size"]) == MAX_BATCH


def test_the_config_of_an_unknown_model_is_the_protocols_error(clients: Clients) -> None:
    with pytest.raises(InferenceServerException, match="nope"):
        clients.http.get_model_config("nope")
    with pytest.raises(InferenceServerException) as raised:
        clients.grpc.get_model_config("nope")
    assert raised.value.status() == "StatusCode.NOT_FOUND"


def test_statistics_count_what_was_served_on_both_doors_and_agree_with_metrics(clients: Clients) -> None:
    before = _counts(_statistics(clients))
    batches_before, images_before = _batch_metrics(clients)
    for _ in range(3):
        clients.http.infer("m", [_image_input(triton_http, 1)])
    clients.grpc.infer("m", [_image_input(triton_grpc, 3)])
    with pytest.raises(InferenceServerException):  # not an image: fails after admission
        bad = triton_http.InferInput("image", [1], "BYTES")
        bad.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
        clients.http.infer("m", [bad])
    stats = _statistics(clients)
    after = _counts(stats)
    batches, images = _batch_metrics(clients)

    assert after["success"] - before["success"] == 4
    assert after["fail"] - before["fail"] == 1
    assert after["inference_count"] - before["inference_count"] == 6 == images - images_before
    assert after["execution_count"] - before["execution_count"] == batches - batches_before
    assert after["queue"] - before["queue"] == 4  # one per answered request, in its first batch
    added = {
        size: after["batches"].get(size, 0) - before["batches"].get(size, 0) for size in after["batches"]
    }
    assert sum(size * count for size, count in added.items()) == 6
    assert max(after["batches"]) <= MAX_BATCH
    inference = stats["inference_stats"]
    assert inference["compute_infer"]["ns"] > 0
    assert inference["success"]["ns"] >= inference["compute_infer"]["ns"]
    assert stats["last_inference"] > 0


def test_every_models_statistics_and_unknown_ones(clients: Clients) -> None:
    every = clients.http.get_inference_statistics()
    assert [entry["name"] for entry in every["model_stats"]] == ["m"]
    assert [e["name"] for e in clients.grpc.get_inference_statistics(as_json=True)["model_stats"]] == ["m"]
    answer = httpx.get(f"{clients.server.url}/v2/models/nope/stats", timeout=10)
    assert answer.status_code == 404
    assert "nope" in answer.json()["error"]
    version = every["model_stats"][0]["version"]
    assert clients.http.get_inference_statistics("m", version)["model_stats"][0]["version"] == version
    with pytest.raises(InferenceServerException):
        clients.http.get_inference_statistics("m", "999")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_aio_clients_read_the_same_config_and_statistics(clients: Clients) -> None:
    expected_config = clients.http.get_model_config("m")
    expected_counts = _counts(_statistics(clients))
    async with triton_http_aio.InferenceServerClient(clients.server.url.removeprefix("http://")) as http:
        assert await http.get_model_config("m") == expected_config
        (stats,) = (await http.get_inference_statistics("m"))["model_stats"]
        assert _counts(stats) == expected_counts
    async with triton_grpc_aio.InferenceServerClient(clients.server.grpc_address) as grpc:
        config = (await grpc.get_model_config("m", as_json=True))["config"]
        assert [tensor["name"] for tensor in config["input"]] == [t["name"] for t in expected_config["input"]]
        (stats,) = (await grpc.get_inference_statistics("m", as_json=True))["model_stats"]
        assert _counts(stats) == expected_counts
