"""OpenAPI documentation of the v2 inference route (the handler writes its JSON itself)."""

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


V2_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": V2InferResponse,
        "description": "JSON; with binary outputs, application/octet-stream: the JSON "
        "(Inference-Header-Content-Length bytes) then the binary sections in output order",
    },
    400: _error("malformed: wrong input name, datatype, shape, truncated binary data, invalid JSON"),
    404: _error("unknown model or version"),
    413: _error("over the body, image or pixel limits"),
    500: _error("the model failed on this batch"),
    503: _error("not ready, draining, or queue full (with Retry-After)"),
    504: _error("the deadline passed"),
}

V2_INFER_OPENAPI: dict[str, Any] = {
    "parameters": [
        parameter(
            "Inference-Header-Content-Length",
            "header",
            {"type": "integer"},
            "binary tensor data extension: the length of the JSON part of the body",
        )
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inlined(V2InferRequest.model_json_schema())},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}
