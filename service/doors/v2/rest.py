"""Open Inference Protocol (v2) over REST, on the same port and pipeline as ``/predict``.

JSON requests and answers, with the binary tensor data extension both ways: a request whose
``Inference-Header-Content-Length`` header is set carries that many bytes of JSON, then the
binary sections of the inputs that declare ``parameters.binary_data_size``, in input order.
A request's JSON is parsed on a worker thread, after its values are counted against what the
model takes, so a large body never holds the event loop. Errors are ``{"error": "message"}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from service.config import ServerSpec
from service.doors.intake import departure_of, read_body
from service.doors.render import json_response, v2_error_response
from service.doors.v2 import schemas
from service.doors.v2.infer import InferRequest, RequestedOutput, infer, model_metadata, server_metadata
from service.doors.v2.model_config import model_config
from service.doors.v2.model_statistics import model_statistics
from service.doors.v2.tensors import (
    InputTensor,
    OutputTensor,
    element_count,
    from_json_data,
    from_raw,
    parse_shape,
    to_json_data,
    to_raw,
)
from service.errors import BadRequest, NotFound, NotReady, ServeError, TooLarge
from service.ops.access import note_model
from service.pipeline.call import Call, accounted
from service.pipeline.runtime import Runtime
from service.pipeline.served import ServedModel

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (v2)"])
HEADER_LENGTH = "inference-header-content-length"
_OTHER_VALUES = 1024  # commas a request may hold besides its tensor's: ids, parameters, outputs
_COUNT_STEP = 1 << 20  # bytes of JSON whose commas are counted at once


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


@router.get("", summary="Server metadata", responses=schemas.V2_SERVER_METADATA_RESPONSES)
async def metadata(request: Request) -> Response:
    return json_response(server_metadata())


@router.get("/health/live", summary="Server live", responses=schemas.V2_LIVE_RESPONSES)
async def live(request: Request) -> Response:
    runtime = _runtime(request)
    if runtime.startup_error is not None:
        return v2_error_response(NotReady(f"model loading failed: {runtime.startup_error}"))
    return json_response({"live": True})


@router.get(
    "/health/ready",
    summary="Server ready: every model warm, not draining",
    responses=schemas.V2_READY_RESPONSES,
)
async def ready(request: Request) -> Response:
    runtime = _runtime(request)
    if runtime.draining:
        return v2_error_response(NotReady("the server is draining before shutdown"))
    if not runtime.registry.ready:
        return v2_error_response(NotReady("models are still loading and warming up"))
    return json_response({"ready": True})


# before /models/{name}, which would read it as the metadata of a model named "stats"
@router.get(
    "/models/stats",
    summary="Statistics of every model (Triton's statistics extension)",
    responses={200: schemas.V2_STATISTICS_RESPONSES[200]},
)
async def get_all_statistics(request: Request) -> Response:
    return json_response(model_statistics(_runtime(request).registry))


F = TypeVar("F", bound=Callable[..., Awaitable[Response]])


def _model_route(suffix: str, summary: str, responses: dict[int | str, dict[str, Any]]) -> Callable[[F], F]:
    """GET ``/models/{name}`` + ``suffix`` and its ``/versions/{version}`` twin, one handler."""

    def register(handler: F) -> F:
        router.get(f"/models/{{name}}{suffix}", summary=summary, responses=responses)(handler)
        versioned = f"/models/{{name}}/versions/{{version}}{suffix}"
        router.get(versioned, summary=f"{summary} (one version)", responses=responses)(handler)
        return handler

    return register


@_model_route("/stats", "Model statistics", schemas.V2_STATISTICS_RESPONSES)
async def get_model_statistics(name: str, request: Request, version: str | None = None) -> Response:
    return json_response(model_statistics(_runtime(request).registry, name, version))


@_model_route("/config", "Model configuration (Triton's ModelConfig)", schemas.V2_CONFIG_RESPONSES)
async def get_model_config(name: str, request: Request, version: str | None = None) -> Response:
    served = _runtime(request).registry.named(name)
    return json_response(model_config(served, served.pin(version)))


@_model_route("", "Model metadata", schemas.V2_METADATA_RESPONSES)
async def get_model_metadata(name: str, request: Request, version: str | None = None) -> Response:
    served = _runtime(request).registry.named(name)
    return json_response(model_metadata(served, served.pin(version)))


@_model_route("/ready", "Model ready", schemas.V2_MODEL_READY_RESPONSES)
async def model_ready(name: str, request: Request, version: str | None = None) -> Response:
    served = _runtime(request).registry.named(name)
    served.check_version(version)
    return json_response({"name": name, "ready": served.ready}, 200 if served.ready else 503)


async def infer_route(request: Request) -> Response:
    """``POST /v2/models/{name}[/versions/{version}]/infer`` (reached straight from the app)."""
    runtime = _runtime(request)
    target = infer_target(request.scope["path"])
    if target is None:
        return v2_error_response(NotFound(f"no route POST {request.scope['path']}"))
    name, version = target
    note_model(name, version)
    served = runtime.registry.models.get(name)
    with accounted(served.metrics if served is not None else runtime.unknown_model_metrics) as answer:
        try:
            response = await _infer(runtime, request, runtime.registry.named(name), version)
        except ServeError as error:
            answer.failed(error)
            response = v2_error_response(error)
        answer.status = response.status_code
    return response


for _path, _versioned in (("/models/{name}/infer", False), ("/models/{name}/versions/{version}/infer", True)):
    router.add_api_route(
        _path,
        infer_route,
        methods=["POST"],
        response_class=Response,
        summary="Inference (JSON, or JSON plus binary tensor data)",
        responses=schemas.V2_INFER_RESPONSES,
        openapi_extra=schemas.v2_infer_openapi(_versioned),
    )


def infer_target(path: str) -> tuple[str, str | None] | None:
    """``(name, version)`` of ``/v2/models/{name}[/versions/{version}]/infer``, else None."""
    parts = path.split("/")
    if parts[:3] != ["", "v2", "models"] or parts[-1] != "infer" or not all(parts[3:-1]):
        return None
    if len(parts) == 5:
        return parts[3], None
    if len(parts) == 7 and parts[4] == "versions":
        return parts[3], parts[5]
    return None


async def _infer(runtime: Runtime, request: Request, served: ServedModel, version: str | None) -> Response:
    async with Call(runtime, served, version, departure=departure_of(request)) as call:
        body = await read_body(request, call.limits.max_body_bytes, call.hold_body)
        call.uploaded()
        header_length = request.headers.get(HEADER_LENGTH)
        # megabytes of JSON take seconds of Python to parse and flatten: not on the event loop,
        # and not on the decode threads either, which the DecodePool shares out fairly
        parsed, binary_default = await asyncio.to_thread(
            _parse, body, header_length, _value_limit(served, call.limits)
        )
        outputs = await infer(call, parsed)
    binary = {output.name: output.binary for output in parsed.outputs or ()}
    return _answer(served.name, call.pinned.version, parsed.id, outputs, binary, binary_default)


def _value_limit(served: ServedModel, limits: ServerSpec) -> int:
    """The most tensor elements a request to ``served`` can carry: a full batch of its input
    tensor (an ``image`` input holds one element per image, fewer)."""
    return limits.max_images_per_request * element_count(served.input_shape)


def _parse(body: bytes, header_length: str | None, max_values: int) -> tuple[InferRequest, bool]:
    """The request, and whether outputs it does not name are answered in binary.

    The JSON's values are counted before it is parsed (each comma separates two; base64 and
    the other strings hold few): parsing ten million of them holds the interpreter for
    seconds, and no answer could come of a request that carries more than the model takes."""
    json_part, binary = _split(body, header_length)
    if _more_commas(json_part, max_values + _OTHER_VALUES):
        raise TooLarge(
            f"the JSON request holds more than the {max_values} tensor elements this model takes in "
            "one request; send fewer, or large tensors with the binary tensor data extension"
        )
    try:
        document = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise BadRequest("the request must be a JSON object with an 'inputs' list")
    inputs, offset = [], 0
    for raw in document["inputs"]:
        tensor, offset = _input(raw, binary, offset, max_values)
        inputs.append(tensor)
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    binary_default = _parameters(document).get("binary_data_output") is True
    outputs = _outputs(document.get("outputs"), binary_default)
    request_id = document.get("id")
    return InferRequest(request_id if isinstance(request_id, str) else None, inputs, outputs), binary_default


def _more_commas(json_part: bytes, limit: int) -> bool:
    """Whether ``json_part`` holds more than ``limit`` commas, counted a megabyte at a time
    (each count holds the GIL: the event loop waits at most one step, and a body far over the
    limit is refused after its first)."""
    commas = 0
    for start in range(0, len(json_part), _COUNT_STEP):
        commas += json_part.count(b",", start, start + _COUNT_STEP)
        if commas > limit:
            return True
    return False


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length {header_length!r} does not fit a {len(body)}-byte body"
        )
    length = int(header_length)
    return body[:length], memoryview(body)[length:]


def _input(raw: Any, binary: memoryview, offset: int, max_values: int) -> tuple[InputTensor, int]:
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("name"), str)
        or not isinstance(raw.get("datatype"), str)
    ):
        raise BadRequest("each input needs a 'name', a 'datatype' and a 'shape'")
    name, datatype = raw["name"], raw["datatype"]
    shape = parse_shape(name, raw.get("shape"))
    if element_count(shape) > max_values:
        raise TooLarge(
            f"input {name!r}: shape {list(shape)} holds more than the {max_values} elements this model "
            "takes in one request"
        )
    size = _parameters(raw).get("binary_data_size")
    if size is None:
        if "data" not in raw:
            raise BadRequest(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
        return from_json_data(name, datatype, shape, raw["data"]), offset
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequest(f"input {name!r}: binary_data_size must be a non-negative integer")
    if offset + size > len(binary):
        raise BadRequest(
            f"input {name!r}: the binary data are truncated ({len(binary) - offset} of {size} bytes)"
        )
    return from_raw(name, datatype, shape, binary[offset : offset + size]), offset + size


def _outputs(raw: Any, binary_default: bool) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise BadRequest("'outputs' must be a list")
    outputs = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest("each requested output needs a 'name'")
        parameters = _parameters(item)
        count = parameters.get("classification")
        if count is not None and (not isinstance(count, int) or isinstance(count, bool)):
            raise BadRequest(f"output {item['name']!r}: 'classification' must be an integer")
        outputs.append(
            RequestedOutput(item["name"], count, parameters.get("binary_data", binary_default) is True)
        )
    return outputs


def _parameters(raw: dict[str, Any]) -> dict[str, Any]:
    parameters = raw.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be a JSON object")
    return parameters


def _answer(
    model: str,
    version: str,
    request_id: str | None,
    outputs: list[OutputTensor],
    binary: dict[str, bool],
    binary_default: bool,
) -> Response:
    described, sections = [], []
    for tensor in outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary.get(tensor.name, binary_default):
            section = to_raw(tensor)
            entry["parameters"] = {"binary_data_size": len(section)}
            sections.append(section)
        else:
            entry["data"] = to_json_data(tensor)
        described.append(entry)
    body: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": described}
    if request_id is not None:
        body["id"] = request_id
    header = orjson.dumps(body)
    if not sections:
        return Response(header, media_type="application/json")
    return Response(
        b"".join((header, *sections)),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
