"""Open Inference Protocol (v2) over gRPC: ``inference.GRPCInferenceService`` with ``grpc.aio``
in the server's own process and event loop, on the same pipeline as ``/predict``.

The protocol messages are tritonclient's compiled ``service_pb2`` (Triton's superset of the
KServe v2 proto: its repository extension and ``ModelStreamInfer`` are served, the other RPCs it
adds answer UNIMPLEMENTED, naming the method). Inputs come as ``raw_input_contents``
or typed ``contents``; outputs always go as ``raw_output_contents``. Beside it on the same
port: ``grpc.health.v1.Health`` (``health``) and server reflection (``reflection``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from service.doors.admin import bearer_token
from service.doors.v2 import repository
from service.doors.v2.grpc_calls import HEALTH_SERVICE, UnaryCalls, abort, finish
from service.doors.v2.grpc_intake import MessageIntake
from service.doors.v2.health import Health, server_ready
from service.doors.v2.infer import InferRequest, RequestedOutput, infer, model_metadata, server_metadata
from service.doors.v2.model_config import model_config, model_config_proto
from service.doors.v2.model_statistics import model_statistics, statistics_proto
from service.doors.v2.reflection import enable_reflection
from service.doors.v2.stream import answered
from service.doors.v2.tensors import InputTensor, from_contents, from_raw, parse_shape, to_raw
from service.errors import BadRequest, ConfigError, NotFound, ServeError
from service.ops.access import Access, RequestIds, note_model, note_status
from service.pipeline.call import Call, accounted
from service.pipeline.runtime import Runtime
from service.pipeline.served import ServedModel

log = logging.getLogger(__name__)

# Where typed contents live for each datatype (the proto's InferTensorContents fields).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The v2 RPCs; every answer is looked up on the runtime, nothing is cached here."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.ids = RequestIds()  # the access lines' ids of streamed requests
        # a stream may hold one full batch of any model in flight, and no more
        self.window = max(spec.batching.max_batch_size for spec in runtime.config.models.values())

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=self.runtime.startup_error is None)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=server_ready(self.runtime))

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            served = self.runtime.registry.named(request.name)
            served.check_version(request.version or None)
        except ServeError as error:
            await abort(context, error)
        return pb.ModelReadyResponse(ready=served.ready)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(**server_metadata())

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            served = self.runtime.registry.named(request.name)
            described = model_metadata(served, served.pin(request.version or None))
        except ServeError as error:
            await abort(context, error)
        return pb.ModelMetadataResponse(
            name=described["name"],
            versions=described["versions"],
            platform=described["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**tensor) for tensor in described["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**tensor) for tensor in described["outputs"]],
        )

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            served = self.runtime.registry.named(request.name)
            config = model_config(served, served.pin(request.version or None))
        except ServeError as error:
            await abort(context, error)
        return pb.ModelConfigResponse(config=model_config_proto(config))

    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Every model's for an empty name (Triton's statistics extension)."""
        try:
            statistics = model_statistics(self.runtime.registry, request.name, request.version or None)
        except ServeError as error:
            await abort(context, error)
        return statistics_proto(statistics)

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await self._accounted(request, streamed=False)
        except ServeError as error:
            await abort(context, error)

    async def ModelStreamInfer(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        """Triton's bidirectional stream: each request answered as ``ModelInfer`` answers it,
        with its own access line; an error is that request's ``error_message`` (see ``stream``)."""
        peer = context.peer()
        client = peer.partition(":")[2] or peer
        try:
            async for response in answered(requests, lambda one: self._streamed(one, client), self.window):
                yield response
        except DecodeError:  # grpc's reader of the stream is done with: the stream ends here
            message = "a message on the stream is not a valid inference.ModelInferRequest"
            await abort(context, BadRequest(message))

    async def _streamed(self, request: Any, client: str) -> Any:
        access = Access("grpc", "ModelStreamInfer", _STREAM_PATH, client, self.ids.choose(request.id or None))
        access.begin()
        try:
            response = pb.ModelStreamInferResponse(
                infer_response=await self._accounted(request, streamed=True)
            )
        except ServeError as error:
            note_status(error.status)
            finish(access, grpc.StatusCode[error.grpc_code])
            failed = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
            return pb.ModelStreamInferResponse(error_message=error.message, infer_response=failed)
        except BaseException as exc:  # the stream ended early (cancelled), or a bug (UNKNOWN)
            cancelled = isinstance(exc, asyncio.CancelledError)
            finish(access, grpc.StatusCode.CANCELLED if cancelled else grpc.StatusCode.UNKNOWN)
            raise
        finish(access, grpc.StatusCode.OK)
        return response

    async def _accounted(self, request: Any, *, streamed: bool) -> Any:
        """One inference request, counted in its model's metrics (a refusal is raised)."""
        runtime = self.runtime
        note_model(request.model_name, request.model_version or None)
        served = runtime.registry.models.get(request.model_name)
        with accounted(served.metrics if served is not None else runtime.unknown_model_metrics) as answer:
            try:
                served_model = runtime.registry.named(request.model_name)
                response = await self._infer(request, served_model, streamed=streamed)
            except ServeError as error:
                answer.failed(error)
                raise
            except asyncio.CancelledError:  # the client cancelled or its deadline passed
                answer.status = 499
                raise
            answer.status = 200
        return response

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.repository_name:
            await abort(context, _unknown_repository(request.repository_name))
        models = repository.index(self.runtime, ready_only=request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**m) for m in models])

    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        note_model(request.model_name)
        try:
            if request.repository_name:
                raise _unknown_repository(request.repository_name)
            await repository.load(
                self.runtime, request.model_name, lambda: _parameters(request.parameters), _asker(context)
            )
        except ServeError as error:
            await abort(context, error)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        note_model(request.model_name)
        try:
            if request.repository_name:
                raise _unknown_repository(request.repository_name)
            await repository.unload(self.runtime, request.model_name, _asker(context))
        except ServeError as error:
            await abort(context, error)
        return pb.RepositoryModelUnloadResponse()

    async def _infer(self, request: Any, served: ServedModel, *, streamed: bool) -> Any:
        # gRPC has received the whole message: the deadline is the server's from the start
        async with Call(self.runtime, served, request.model_version or None, uploading=False) as call:
            if streamed:  # a unary call's message holds the budget from its intake on
                call.hold_body(request.ByteSize())
            parsed = InferRequest(request.id or None, _inputs(request), _outputs(request.outputs))
            outputs = await infer(call, parsed)
        version = call.pinned
        return pb.ModelInferResponse(
            model_name=served.name,
            model_version=version.version,
            id=request.id,
            outputs=[
                pb.ModelInferResponse.InferOutputTensor(name=t.name, datatype=t.datatype, shape=t.shape)
                for t in outputs
            ],
            raw_output_contents=[to_raw(tensor) for tensor in outputs],
        )


_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
_STREAM_PATH = f"/{_SERVICE}/ModelStreamInfer"


def _unimplemented(method: str) -> Callable[..., Awaitable[Any]]:
    async def refuse(self: InferenceService, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            f"{_SERVICE}/{method} is not implemented by model-serve (docs/kserve.md lists its RPCs)",
        )

    refuse.__name__ = method
    return refuse


# Triton's RPCs that model-serve does not serve (shared memory, trace and log settings): each
# answers UNIMPLEMENTED naming itself, where the generated base class would raise
# NotImplementedError and leave a traceback in the log for every such call.
for _method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
    if _method.name not in vars(InferenceService):
        setattr(InferenceService, _method.name, _unimplemented(_method.name))


def _asker(context: grpc.aio.ServicerContext) -> repository.Asker:
    metadata = context.invocation_metadata() or ()
    given = next((value for key, value in metadata if key == "authorization"), None)
    peer = context.peer()
    token = bearer_token(given if isinstance(given, str) else None)
    return repository.Asker(token, peer.partition(":")[2] or peer)


def _parameters(parameters: Mapping[str, Any]) -> dict[str, object]:
    """A load's ``ModelRepositoryParameter`` map as plain values (None: no value set)."""
    values: dict[str, object] = {}
    for key, parameter in parameters.items():
        chosen = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, chosen) if chosen else None
    return values


def _unknown_repository(name: str) -> NotFound:
    return NotFound(f"no repository named {name!r}: model-serve has one; leave repository_name empty")


def _inputs(request: Any) -> list[InputTensor]:
    raw: Sequence[bytes] = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: send one per input"
        )
    tensors = []
    for index, given in enumerate(request.inputs):
        shape = parse_shape(given.name, list(given.shape))
        if raw:
            tensors.append(from_raw(given.name, given.datatype, shape, raw[index]))
            continue
        field = _CONTENTS.get(given.datatype)
        if field is None:
            raise BadRequest(f"input {given.name!r}: unknown datatype {given.datatype!r}")
        tensors.append(from_contents(given.name, given.datatype, shape, getattr(given.contents, field)))
    return tensors


def _outputs(requested: Sequence[Any]) -> list[RequestedOutput] | None:
    outputs = []
    for output in requested:
        parameter = output.parameters.get("classification")
        count = parameter.int64_param if parameter is not None else None
        outputs.append(RequestedOutput(output.name, count or None, binary=True))
    return outputs or None


@dataclass(frozen=True)
class GrpcDoor:
    """The started gRPC server, its bound port and its health service (ended first at stop)."""

    server: grpc.aio.Server
    port: int
    health: Health


async def start_grpc(runtime: Runtime, host: str, port: int) -> GrpcDoor:
    """A started server on its own port; a port that cannot be bound, or that another process
    already listens on, is a clear error (bound exclusively: no ``SO_REUSEPORT`` sharing, which
    would let a second server split the first one's calls)."""
    limit = runtime.config.server.max_body_bytes
    server = grpc.aio.server(
        interceptors=[UnaryCalls(MessageIntake(runtime))],
        options=[
            ("grpc.so_reuseport", 0),
            # no window growth past what a call has asked to read: a message that waits for
            # a receive slot stays on the client (with it, grpc buffered ~9 MB per waiting call)
            ("grpc.http2.bdp_probe", 0),
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", 4 * limit),
        ],
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(runtime), server)
    health = Health(runtime)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    enable_reflection(server, [_SERVICE, HEALTH_SERVICE])
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise ConfigError(_bind_failure(host, port))
    await server.start()
    log.info("gRPC (Open Inference Protocol v2) on %s:%d", host, bound)
    return GrpcDoor(server, bound, health)


def _bind_failure(host: str, port: int) -> str:
    """Why gRPC could not bind, in the words uvicorn uses for an HTTP port (grpc says only that
    it failed): the kernel's answer to binding the address again, e.g. address already in use."""
    where = f"error while attempting to bind on gRPC address {(host, port)!r}"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc binds
            probe.bind((host, port))
            return f"{where}: grpc could not bind it"
    except OSError as exc:
        if exc.errno is None or exc.strerror is None:
            return f"{where}: {exc}"
        return f"[Errno {exc.errno}] {where}: {exc.strerror.lower()}"


async def stop_grpc(door: GrpcDoor, grace_s: float) -> None:
    """Ends the health streams, refuses new calls and answers the ones in flight (up to ``grace_s``)."""
    started = time.monotonic()
    door.health.close()
    await door.server.stop(grace_s)
    log.info("gRPC stopped after %.1f s", time.monotonic() - started)
