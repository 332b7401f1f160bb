"""OpenAPI documentation of the v2 routes: their answers, errors, and the infer route's
request (the handlers write their JSON themselves; these only describe it)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from service.doors.schemas import parameter


class V2Error(BaseModel):
    error: str = Field(description="what is wrong with the request, or why it cannot be served now")


class V2Tensor(BaseModel):
    name: str = Field(description="inputs: 'image' (BYTES) or 'input' (FP32); outputs: see model metadata")
    datatype: str = Field(description="BYTES, FP32, INT64, UINT8, ...")
    shape: list[int]
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size (binary extension), binary_data / classification (outputs)"
    )
    data: list[Any] | None = Field(None, description="flat or nested; BYTES elements as base64 strings")


class V2RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(
        None, description='{"binary_data": true} and/or {"classification": k} (Triton\'s top-k extension)'
    )


class V2InferRequest(BaseModel):
    id: str | None = Field(None, description="echoed in the answer")
    parameters: dict[str, Any] | None = Field(
        None, description='{"binary_data_output": true}: every output binary'
    )
    inputs: list[V2Tensor] = Field(description="exactly one: 'image' BYTES [N] or 'input' FP32 [N, C, H, W]")
    outputs: list[V2RequestedOutput] | None = Field(None, description="default: every output of the model")


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str = Field(description="first 12 hex digits of the checkpoint's SHA-256")
    id: str | None = None
    outputs: list[V2Tensor]


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str] = Field(description="the protocol extensions this server supports")


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 where the size is free (the batch dimension)")


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(description="the active version")
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` references replaced by the definitions themselves: the
    route's body is documented through ``openapi_extra``, outside the spec's components."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(definitions[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def _error(description: str) -> dict[str, Any]:
    return {"model": V2Error, "description": description}


def _json_object(description: str) -> dict[str, Any]:
    """A 200 answer documented as a JSON object (Triton's config and statistics shapes)."""
    return {"description": description, "content": {"application/json": {"schema": {"type": "object"}}}}


# what every route naming a model may answer besides its own
V2_MODEL_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("the model is unloaded (repository extension)"),
    404: _error("unknown model or version"),
}
V2_SERVER_METADATA_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"model": V2ServerMetadata}}
V2_LIVE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": V2Live},
    503: _error("model loading failed"),
}
V2_READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": V2Ready},
    503: _error("models still loading, or draining"),
}
V2_METADATA_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"model": V2ModelMetadata}, **V2_MODEL_ERRORS}
V2_MODEL_READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": V2ModelReady},
    503: {"model": V2ModelReady, "description": "not ready: loading, or a replica restarting"},
    **V2_MODEL_ERRORS,
}
V2_CONFIG_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _json_object("Triton's ModelConfig"),
    **V2_MODEL_ERRORS,
}
V2_STATISTICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _json_object("Triton's statistics: model_stats"),
    **V2_MODEL_ERRORS,
}

V2_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": V2InferResponse,
        "description": "JSON; with binary outputs, application/octet-stream: the JSON "
        "(Inference-Header-Content-Length bytes) then the binary sections in output order",
    },
    **V2_MODEL_ERRORS,
    400: _error(
        "malformed: wrong input name, datatype, shape, truncated binary data, invalid JSON; "
        "or the model is unloaded"
    ),
    413: _error("over the body, image or pixel limits"),
    415: _error("a Content-Encoding other than gzip or deflate"),
    500: _error("the model failed on this batch"),
    503: _error("not ready, draining, or queue full (with Retry-After)"),
    504: _error("the deadline passed"),
}

_HEADER_LENGTH = parameter(
    "Inference-Header-Content-Length",
    "header",
    {"type": "integer", "minimum": 0},
    "binary tensor data extension: the length of the JSON part of the body",
)
_NAME = parameter("name", "path", {"type": "string"}, "the model's name")
_VERSION = parameter("version", "path", {"type": "string"}, "the model version (12 hex digits)")


def v2_infer_openapi(versioned: bool) -> dict[str, Any]:
    """The infer route's parameters and body: its handler reads the request itself, so the
    path parameters FastAPI would take from a signature are declared here too."""
    path = [_NAME, _VERSION] if versioned else [_NAME]
    return {
        "parameters": [*path, _HEADER_LENGTH],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _inlined(V2InferRequest.model_json_schema())},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
    }
