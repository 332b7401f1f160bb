"""The repository extension (index, load, unload) with tritonclient HTTP and gRPC against a real
server of two models, ``m`` (checkpoints A and B under ``checkpoint_root``) and ``n``.

Served answers are compared with the in-process model of the version each reports, on all
three doors; every test leaves ``m`` serving A, so each can run alone.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from tests.support.harness import ADMIN, model_entry, png, save_random_weights, serving, write_config
from tests.support.loadgen import PNG, file_version, matches, reference_scores
from tests.support.serving import ServerProcess
from tests.support.waiting import await_until, wait_until

ARCH = "tests.support.archs:slow_classifier"
ARGS = {"delay_s": 0.003, "in_channels": 1, "num_classes": 3}
IMAGES = [png(v) for v in (0, 90, 200)] + [png(None, seed=3)]
GRPC_ADMIN = {"authorization": ADMIN["Authorization"]}
UNLOADED = "model 'm' is unloaded; load it with POST /v2/repository/models/m/load"


@dataclass(frozen=True)
class Repository:
    server: ServerProcess
    base: Path
    versions: dict[str, str]  # checkpoint file -> version
    refs: dict[str, list[list[float]]]  # version -> per image probabilities


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repository]:
    base = tmp_path_factory.mktemp("v2repo")
    root = base / "ckpt"
    versions, refs = {}, {}
    for name, seed in (("a.pt", 1), ("b.pt", 2), ("n.pt", 3)):
        model = save_random_weights(ARCH, ARGS, root / name, seed=seed)
        versions[name] = file_version(root / name)
        refs[versions[name]] = reference_scores(model, IMAGES)
    a, b = np.array(refs[versions["a.pt"]]), np.array(refs[versions["b.pt"]])
    assert (np.abs(a - b).max(axis=1) > 1e-3).all(), "the versions must differ on every image"
    (base / "outside.pt").write_bytes((root / "b.pt").read_bytes())
    os.symlink(base / "outside.pt", root / "link.pt")
    models = {
        "m": model_entry(ARCH, "ckpt/a.pt", init_args=ARGS, batching={"max_batch_size": 4}),
        "n": model_entry(ARCH, "ckpt/n.pt", init_args=ARGS),
    }
    config = write_config(base, models, checkpoint_root="ckpt")
    with ServerProcess(config, base / "server.log") as server:
        yield Repository(server, base, versions, refs)


@pytest.fixture
def http(repo: Repository) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(repo.server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture
def grpc_client(repo: Repository) -> Iterator[triton_grpc.InferenceServerClient]:
    client = triton_grpc.InferenceServerClient(repo.server.grpc_address)
    yield client
    client.close()


@pytest.fixture
def stub(repo: Repository) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    """The raw stub, for load parameters tritonclient has no argument for."""
    with grpc.insecure_channel(repo.server.grpc_address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(autouse=True)
def m_serves_a(repo: Repository) -> Iterator[None]:
    """Each test starts and leaves ``m`` serving A."""
    yield
    answer = _load(repo, {"checkpoint": "a.pt"})
    assert answer.status_code == 200, answer.text


def _load(repo: Repository, parameters: dict[str, object] | None = None, model: str = "m") -> httpx.Response:
    body = {} if parameters is None else {"parameters": parameters}
    url = f"{repo.server.url}/v2/repository/models/{model}/load"
    return httpx.post(url, json=body, headers=ADMIN, timeout=60)


# --- one inference on each door ----------------------------------------------------------------


def _predict(repo: Repository, model: str, image: int) -> tuple[int, dict[str, object]]:
    url = f"{repo.server.url}/predict?model={model}"
    answer = httpx.post(url, content=IMAGES[image], headers=PNG, timeout=10)
    return answer.status_code, answer.json()


def _rest(repo: Repository, model: str, image: int) -> tuple[int, dict[str, object]]:
    data = [base64.b64encode(IMAGES[image]).decode()]
    body = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": data}],
        "outputs": [{"name": "probabilities"}],
    }
    answer = httpx.post(f"{repo.server.url}/v2/models/{model}/infer", content=json.dumps(body), timeout=10)
    return answer.status_code, answer.json()


def _grpc_infer(client: triton_grpc.InferenceServerClient, model: str, image: int) -> triton_grpc.InferResult:
    request = triton_grpc.InferInput("image", [1], "BYTES")
    request.set_data_from_numpy(np.array([IMAGES[image]], dtype=object))
    outputs = [triton_grpc.InferRequestedOutput("probabilities")]
    return client.infer(model, [request], outputs=outputs, client_timeout=10)


def _assert_serves(
    repo: Repository, grpc_client: triton_grpc.InferenceServerClient, model: str, checkpoint: str
) -> None:
    """Every door answers ``model`` with the version of ``checkpoint`` and its reference scores."""
    version = repo.versions[checkpoint]
    for image, expected in enumerate(repo.refs[version]):
        status, body = _predict(repo, model, image)
        assert status == 200 and body["version"] == version, body
        assert matches(body["predictions"][0], expected), (body, expected)  # type: ignore[index]
        status, body = _rest(repo, model, image)
        assert status == 200 and body["model_version"] == version, body
        assert np.allclose(body["outputs"][0]["data"], expected, atol=1e-5)  # type: ignore[index]
        result = _grpc_infer(grpc_client, model, image)
        assert result.get_response().model_version == version
        assert np.allclose(result.as_numpy("probabilities")[0], expected, atol=1e-5)


def _index(http: triton_http.InferenceServerClient) -> dict[str, dict[str, str]]:
    return {entry["name"]: entry for entry in http.get_model_repository_index()}


def _metric(repo: Repository, name: str, **labels: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(f"{repo.server.url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


# --- the tests ----------------------------------------------------------------------------------


def test_index_lists_every_model_ready_on_both_doors(
    repo: Repository, http: triton_http.InferenceServerClient, grpc_client: triton_grpc.InferenceServerClient
) -> None:
    expected = {
        "m": {"name": "m", "version": repo.versions["a.pt"], "state": "READY", "reason": ""},
        "n": {"name": "n", "version": repo.versions["n.pt"], "state": "READY", "reason": ""},
    }
    assert _index(http) == expected
    answer = grpc_client.get_model_repository_index(as_json=True)
    assert {m["name"]: m["state"] for m in answer["models"]} == {"m": "READY", "n": "READY"}
    ready_only = httpx.post(f"{repo.server.url}/v2/repository/index", json={"ready": True})
    assert ready_only.status_code == 200 and len(ready_only.json()) == 2
    bad = httpx.post(f"{repo.server.url}/v2/repository/index", content=b"{not json")
    assert bad.status_code == 400 and isinstance(bad.json()["error"], str)


def test_unload_refuses_the_model_on_every_door_and_load_brings_it_back(
    repo: Repository, http: triton_http.InferenceServerClient, grpc_client: triton_grpc.InferenceServerClient
) -> None:
    unloads = _metric(repo, "model_serve_reloads_total", model="m", outcome="unload")
    http.unload_model("m", headers=ADMIN)

    index = _index(http)
    assert index["m"]["state"] == "UNAVAILABLE" and index["m"]["reason"] == "unloaded", index
    assert index["n"]["state"] == "READY"
    ready = httpx.post(f"{repo.server.url}/v2/repository/index", json={"ready": True}).json()
    assert [entry["name"] for entry in ready] == ["n"]
    assert not http.is_model_ready("m") and not grpc_client.is_model_ready("m")
    # the server stays ready, as Triton's does: the other model still serves
    assert http.is_server_ready() and grpc_client.is_server_ready()
    assert httpx.get(f"{repo.server.url}/readyz").status_code == 200

    status, body = _predict(repo, "m", 0)
    assert status == 400 and body["error"] == {"code": "model_unloaded", "message": UNLOADED}, body
    status, body = _rest(repo, "m", 0)
    assert status == 400 and body == {"error": UNLOADED}, body
    with pytest.raises(InferenceServerException) as refused:
        _grpc_infer(grpc_client, "m", 0)
    assert refused.value.status() == "StatusCode.FAILED_PRECONDITION" and refused.value.message() == UNLOADED
    reload = httpx.post(f"{repo.server.url}/models/m/reload", headers=ADMIN)
    assert reload.status_code == 400 and reload.json()["error"]["message"] == UNLOADED
    _assert_serves(repo, grpc_client, "n", "n.pt")
    assert _metric(repo, "model_serve_reloads_total", model="m", outcome="unload") == (unloads or 0) + 1
    assert _metric(repo, "model_serve_model_info", model="m") is None

    again = httpx.post(f"{repo.server.url}/v2/repository/models/m/unload", headers=ADMIN)
    assert again.status_code == 200 and again.json() == {"model": "m", "version": None, "changed": False}

    grpc_client.load_model("m", headers=GRPC_ADMIN)
    assert _index(http)["m"]["state"] == "READY"
    assert http.is_model_ready("m") and grpc_client.is_model_ready("m")
    _assert_serves(repo, grpc_client, "m", "a.pt")
    assert "unload m success" in repo.server.log() and "load m success" in repo.server.log()


def test_load_with_a_checkpoint_parameter_serves_that_version(
    repo: Repository, grpc_client: triton_grpc.InferenceServerClient, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    answer = _load(repo, {"checkpoint": "b.pt"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "model": "m",
        "previous_version": repo.versions["a.pt"],
        "version": repo.versions["b.pt"],
        "changed": True,
    }
    _assert_serves(repo, grpc_client, "m", "b.pt")

    # an unloaded model loaded from another checkpoint, over gRPC
    grpc_client.unload_model("m", headers=GRPC_ADMIN)
    request = pb.RepositoryModelLoadRequest(
        model_name="m", parameters={"checkpoint": pb.ModelRepositoryParameter(string_param="a.pt")}
    )
    stub.RepositoryModelLoad(request, metadata=tuple(GRPC_ADMIN.items()), timeout=60)
    _assert_serves(repo, grpc_client, "m", "a.pt")


@pytest.mark.parametrize("where", ["../outside.pt", "absolute", "link.pt"])
def test_a_checkpoint_outside_the_root_is_refused(
    repo: Repository,
    grpc_client: triton_grpc.InferenceServerClient,
    stub: pb_grpc.GRPCInferenceServiceStub,
    where: str,
) -> None:
    path = str(repo.base / "outside.pt") if where == "absolute" else where
    answer = _load(repo, {"checkpoint": path})
    assert answer.status_code == 403, answer.text
    refusal = answer.json()["error"]
    assert "outside checkpoint_root" in refusal or "'..' is not allowed" in refusal, refusal
    request = pb.RepositoryModelLoadRequest(
        model_name="m", parameters={"checkpoint": pb.ModelRepositoryParameter(string_param=path)}
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub.RepositoryModelLoad(request, metadata=tuple(GRPC_ADMIN.items()), timeout=60)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    _assert_serves(repo, grpc_client, "m", "a.pt")


@pytest.mark.parametrize("token", [None, "Bearer wrong"])
def test_load_and_unload_need_the_admin_token(
    repo: Repository,
    http: triton_http.InferenceServerClient,
    grpc_client: triton_grpc.InferenceServerClient,
    token: str | None,
) -> None:
    headers = {} if token is None else {"Authorization": token}
    for action in ("load", "unload"):
        answer = httpx.post(f"{repo.server.url}/v2/repository/models/m/{action}", headers=headers)
        assert answer.status_code == 401 and isinstance(answer.json()["error"], str), answer.text
    metadata = {} if token is None else {"authorization": token}
    with pytest.raises(InferenceServerException) as refused:
        grpc_client.unload_model("m", headers=metadata)
    assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as refused:
        grpc_client.load_model("m", headers=metadata)
    assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
    assert _index(http)["m"]["state"] == "READY"
    _assert_serves(repo, grpc_client, "m", "a.pt")
    wait_until(lambda: repo.server.log().count("unload m unauthorized") >= 2, 10, "the refusals audited")


def test_unknown_models_and_parameters_get_the_protocols_errors(
    repo: Repository, grpc_client: triton_grpc.InferenceServerClient
) -> None:
    for action in ("load", "unload"):
        answer = httpx.post(f"{repo.server.url}/v2/repository/models/nope/{action}", headers=ADMIN)
        assert answer.status_code == 404 and "nope" in answer.json()["error"], answer.text
    with pytest.raises(InferenceServerException) as refused:
        grpc_client.load_model("nope", headers=GRPC_ADMIN)
    assert refused.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as refused:
        grpc_client.load_model("m", headers=GRPC_ADMIN, config="{}")
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT" and "checkpoint" in refused.value.message()
    for body in ({"parameters": {"checkpoint": 3}}, {"parameters": []}, [1]):
        answer = httpx.post(f"{repo.server.url}/v2/repository/models/m/load", json=body, headers=ADMIN)
        assert answer.status_code == 400 and isinstance(answer.json()["error"], str), answer.text


# --- in-process: what an unload frees and lets finish ------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_unload_lets_requests_in_flight_finish_then_frees_the_weights(tmp_path: Path) -> None:
    args = {"delay_s": 0.4, "in_channels": 1, "num_classes": 3}
    model = save_random_weights(ARCH, args, tmp_path / "s.pt")
    expected = reference_scores(model, IMAGES[:1])[0]
    config = write_config(tmp_path, {"s": model_entry(ARCH, "s.pt", init_args=args)})
    async with serving(config) as (client, runtime):
        served = runtime.registry.models["s"]
        assert served.active is not None
        weights = weakref.ref(served.active.device_models[0].module)
        flying = asyncio.ensure_future(client.post("/predict?model=s", content=IMAGES[0], headers=PNG))
        await await_until(lambda: any(r.busy for r in served.replicas), 10, "the request running")
        unloaded = await client.post("/v2/repository/models/s/unload", headers=ADMIN)
        assert unloaded.status_code == 200, unloaded.text
        answer = await flying
        assert answer.status_code == 200 and matches(answer.json()["predictions"][0], expected), answer.text
        refused = await client.post("/predict?model=s", content=IMAGES[0], headers=PNG)
        assert refused.status_code == 400

        def freed() -> bool:
            gc.collect()
            return weights() is None

        await await_until(freed, 10, "the unloaded weights freed")
        loaded = await client.post("/v2/repository/models/s/load", headers=ADMIN)
        assert loaded.status_code == 200 and loaded.json()["previous_version"] is None, loaded.text
        again = await client.post("/predict?model=s", content=IMAGES[0], headers=PNG)
        assert again.status_code == 200 and matches(again.json()["predictions"][0], expected)


@pytest.mark.anyio
async def test_a_model_being_loaded_back_is_loading_and_refused_until_it_serves(tmp_path: Path) -> None:
    """The warm-up batch takes ``delay_s``: long enough to see the load in progress."""
    args = {"delay_s": 0.5, "in_channels": 1, "num_classes": 3}
    model = save_random_weights(ARCH, args, tmp_path / "s.pt")
    expected = reference_scores(model, IMAGES[:1])[0]
    config = write_config(tmp_path, {"s": model_entry(ARCH, "s.pt", init_args=args)})
    async with serving(config) as (client, runtime):
        assert (await client.post("/v2/repository/models/s/unload", headers=ADMIN)).status_code == 200

        async def state() -> str:
            answer = await client.post("/v2/repository/index")
            entry: dict[str, str] = answer.json()[0]
            return entry["state"]

        assert await state() == "UNAVAILABLE"
        loading = asyncio.ensure_future(client.post("/v2/repository/models/s/load", headers=ADMIN))
        await await_until(lambda: runtime.registry.models["s"].reload_lock.locked(), 10, "the load begun")
        assert await state() == "LOADING"
        refused = await client.post("/predict?model=s", content=IMAGES[0], headers=PNG)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "model_unloaded"
        assert (await loading).status_code == 200
        assert await state() == "READY"
        served = await client.post("/predict?model=s", content=IMAGES[0], headers=PNG)
        assert served.status_code == 200 and matches(served.json()["predictions"][0], expected)
