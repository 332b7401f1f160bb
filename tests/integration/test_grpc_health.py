"""The gRPC port's standard services beside ``inference.GRPCInferenceService``, with real clients
against a real server of two models ``m`` and ``n``: ``grpc.health.v1.Health`` (Check and Watch,
the server and each model, through unload, load and a SIGTERM drain), server reflection (v1 and
v1alpha), and Triton's RPCs that model-serve does not serve (UNIMPLEMENTED, no traceback).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from tritonclient.grpc import service_pb2 as pb

from tests.support.harness import ADMIN, model_entry, png, save_random_weights, write_config
from tests.support.loadgen import arrived_and_in_flight
from tests.support.serving import ServerProcess
from tests.support.waiting import wait_until

ARCH = "tests.support.archs:slow_classifier"
ARGS = {"delay_s": 0.003, "in_channels": 1, "num_classes": 3}
GRPC_ADMIN = {"authorization": ADMIN["Authorization"]}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
INFERENCE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
UNIMPLEMENTED = [
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
]


def _config(base: Path, delay_s: float, **server: object) -> Path:
    args = {**ARGS, "delay_s": delay_s}
    for name, seed in (("m.pt", 1), ("n.pt", 2)):
        save_random_weights(ARCH, args, base / name, seed=seed)
    models = {name: model_entry(ARCH, f"{name}.pt", init_args=args) for name in ("m", "n")}
    return write_config(base, models, server=server)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("grpc_health")
    with ServerProcess(_config(base, ARGS["delay_s"]), base / "server.log") as process:
        yield process


@pytest.fixture
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_address) as opened:
        yield opened


def _check(channel: grpc.Channel, service: str) -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    answer = health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
    return int(answer.status)


def _watch(channel: grpc.Channel, service: str) -> Iterator[int]:
    """A Watch stream's statuses as they come (each ``next`` waits for the server's next change)."""
    request = health_pb2.HealthCheckRequest(service=service)
    stream = health_pb2_grpc.HealthStub(channel).Watch(request, timeout=60)
    return (int(answer.status) for answer in stream)


# --- health ------------------------------------------------------------------------------------


def test_check_answers_for_the_server_and_each_model(channel: grpc.Channel) -> None:
    assert _check(channel, "") == SERVING
    assert _check(channel, "m") == SERVING and _check(channel, "n") == SERVING
    with pytest.raises(grpc.RpcError) as unknown:
        _check(channel, "nope")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no health service named 'nope'" in unknown.value.details() and "m, n" in unknown.value.details()


def test_watch_streams_a_models_unload_and_load(server: ServerProcess, channel: grpc.Channel) -> None:
    """Unload makes ``m`` NOT_SERVING at once on Check and on an open Watch; the server and ``n``
    still serve (as ``/readyz``: an unloaded model does not count); load brings ``m`` back."""
    watched = _watch(channel, "m")
    assert next(watched) == SERVING
    client = triton_grpc.InferenceServerClient(server.grpc_address)
    try:
        client.unload_model("m", headers=GRPC_ADMIN)
        assert next(watched) == NOT_SERVING
        assert _check(channel, "m") == NOT_SERVING
        assert _check(channel, "") == SERVING and _check(channel, "n") == SERVING
        client.load_model("m", headers=GRPC_ADMIN)
        assert next(watched) == SERVING
        assert _check(channel, "m") == SERVING
    finally:
        client.load_model("m", headers=GRPC_ADMIN)
        client.close()


def test_watch_hears_not_serving_as_a_sigterm_drain_begins_with_a_call_in_flight(tmp_path: Path) -> None:
    """Both the server's and a model's Watch turn NOT_SERVING while a call is still being
    answered; the call is then answered, the streams end cleanly and the server exits 0."""
    config = _config(tmp_path, delay_s=1.5, drain_grace_s=10)
    with ServerProcess(config, tmp_path / "server.log") as process:
        channel = grpc.insecure_channel(process.grpc_address)
        overall, model = _watch(channel, ""), _watch(channel, "m")
        assert next(overall) == SERVING and next(model) == SERVING
        client = triton_grpc.InferenceServerClient(process.grpc_address)
        request = triton_grpc.InferInput("image", [1], "BYTES")
        request.set_data_from_numpy(np.array([png(90)], dtype=object))
        answered: list[object] = []
        call = threading.Thread(target=lambda: answered.append(client.infer("m", [request])), daemon=True)
        call.start()
        wait_until(lambda: arrived_and_in_flight(process.url, "m")[1] >= 1, 10, "the call in flight")
        process.process.send_signal(signal.SIGTERM)
        assert next(overall) == NOT_SERVING and next(model) == NOT_SERVING
        assert call.is_alive(), "the call was answered before the drain was heard"
        call.join(15)
        assert answered and answered[0].as_numpy("probabilities").shape == (1, 3)
        assert list(overall) == [] and list(model) == []  # ended by the server, not cut off
        code = process.process.wait(15)
        client.close()
        channel.close()
    assert code == 0, process.log()[-2000:]


# --- reflection --------------------------------------------------------------------------------


def test_reflection_v1alpha_lists_and_describes_the_services(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services, services
    assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= services
    described = DescriptorPool(database).FindServiceByName("inference.GRPCInferenceService")
    assert {method.name for method in described.methods} == {method.name for method in INFERENCE.methods}


def test_reflection_v1_answers_the_same(channel: grpc.Channel) -> None:
    """v1 has no Python stub: its messages are v1alpha's fields, so v1alpha's classes carry them."""
    ask = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
    ]
    listed, health, itself = list(ask(iter(requests), timeout=10))
    names = {service.name for service in listed.list_services_response.service}
    assert {INFERENCE.full_name, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} <= names
    assert health.file_descriptor_response.file_descriptor_proto, health
    assert b"grpc.reflection.v1" in itself.file_descriptor_response.file_descriptor_proto[0], itself


# --- RPCs not served ---------------------------------------------------------------------------


def test_unserved_rpcs_answer_unimplemented_naming_the_method_without_a_traceback(
    server: ServerProcess, channel: grpc.Channel
) -> None:
    served = {method.name for method in INFERENCE.methods} - set(UNIMPLEMENTED)
    assert "ModelInfer" in served and len(served) == 12  # a new RPC must be sorted into one list
    logged_before = len(server.log())
    for name in UNIMPLEMENTED:
        method = INFERENCE.methods_by_name[name]
        ask = channel.unary_unary(
            f"/{INFERENCE.full_name}/{name}",
            request_serializer=getattr(pb, method.input_type.name).SerializeToString,
            response_deserializer=getattr(pb, method.output_type.name).FromString,
        )
        with pytest.raises(grpc.RpcError) as refused:
            ask(getattr(pb, method.input_type.name)(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED, (name, refused.value)
        assert f"inference.GRPCInferenceService/{name} is not implemented" in refused.value.details()

    def all_logged() -> bool:
        return server.log()[logged_before:].count("UNIMPLEMENTED (501)") == len(UNIMPLEMENTED)

    wait_until(all_logged, 5, "an access line for each call")
    written = server.log()[logged_before:]
    assert "Traceback" not in written and "NotImplementedError" not in written, written
