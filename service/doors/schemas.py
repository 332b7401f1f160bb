"""Answer schemas for the OpenAPI page, the reload request body and the admin security scheme.

The predict path writes its JSON with orjson directly; these models document that JSON, and
the tests check the served answers against them.
"""

from __future__ import annotations

from typing import Any

from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from service.config import TaskName


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable error code, e.g. bad_image, queue_full")
    message: str = Field(description="what went wrong and what to do")


class ErrorBody(BaseModel):
    error: ErrorDetail


class ClassScore(BaseModel):
    label: str
    class_index: int
    score: float


class ClassPrediction(ClassScore):
    top_k: list[ClassScore] = Field(description="best first")


class SegmentationPrediction(BaseModel):
    width: int
    height: int
    mask_png_base64: str = Field(description="single-channel PNG; pixel value = class index")
    class_pixel_counts: dict[str, int]


class PredictResponse(BaseModel):
    model: str
    version: str = Field(description="first 12 hex digits of the checkpoint's SHA-256")
    task: TaskName
    predictions: list[ClassPrediction] | list[SegmentationPrediction]


class ReplicaInfo(BaseModel):
    device: str
    batches: int = Field(description="batches this replica has run since start")
    busy: bool


class ModelInfo(BaseModel):
    name: str
    task: TaskName
    playground: dict[str, bool] = Field(description="what the playground's form offers: top_k, mask")
    version: str | None
    previous_version: str | None
    architecture: str
    checkpoint: str
    devices: list[str]
    replicas: list[ReplicaInfo]
    batching: dict[str, Any]
    precision: str
    channels_last: bool
    fold_batchnorm: bool
    compile: str | bool
    input: dict[str, Any]
    labels: list[str] | None
    loaded_at: str | None
    ready: bool


class ModelList(BaseModel):
    models: list[ModelInfo]


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = Field(
        None, description="path under checkpoint_root; default: the configured checkpoint"
    )


class ReloadAnswer(BaseModel):
    model: str
    previous_version: str | None
    version: str
    changed: bool = Field(description="false when the file's content is the version already serving")


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": PredictResponse,
        "description": "predictions in request order",
        # JSON first: Swagger's "Try it out" sends the first type as its Accept header.
        "content": {"application/json": {}, "image/png": {"schema": {"type": "string", "format": "binary"}}},
    },
    400: _error("no image, or an image that does not decode"),
    404: _error("unknown model"),
    408: _error("the body did not arrive within the request timeout"),
    413: _error("body too large, too many images, or too many pixels"),
    415: _error("unsupported media type"),
    422: _error("invalid parameters"),
    499: _error("the client disconnected (not sent)"),
    500: _error("the model failed on this batch"),
    503: _error("queue full (with Retry-After) or not ready"),
    504: _error("the prediction timed out"),
}

ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _error("missing or wrong admin token"),
    403: _error("checkpoint path outside checkpoint_root"),
    404: _error("unknown model or checkpoint file"),
    413: _error("a body over 64 KiB"),
    422: _error("the checkpoint does not load into the architecture, or a bad body"),
}

# Documents the admin routes' bearer token (Swagger's Authorize button sends it); it never
# refuses by itself, so ``require_admin`` answers every failure with the contract's 401 body.
ADMIN_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="AdminToken",
    description="the server's MODEL_SERVE_ADMIN_TOKEN",
)

# The reload handler reads its (optional) body itself, so an empty body stays valid;
# this documents that body for the OpenAPI page.
RELOAD_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": ReloadRequest.model_json_schema(),
                "examples": {
                    "configured": {"summary": "re-read the configured checkpoint", "value": {}},
                    "other file": {
                        "summary": "a file under checkpoint_root",
                        "value": {"checkpoint": "digits-v2.safetensors"},
                    },
                },
            }
        },
    }
}

_IMAGE_BODY = {"schema": {"type": "string", "format": "binary"}}
# Every raw-body type intake accepts (it takes any image/* and application/octet-stream).
RAW_IMAGE_TYPES = (
    "image/png",
    "image/jpeg",
    "image/webp",
    "image/bmp",
    "image/gif",
    "image/tiff",
    "application/octet-stream",
)


def parameter(name: str, where: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """An OpenAPI parameter of a route that reads its own request (path ones are required)."""
    required = where == "path"
    return {"name": name, "in": where, "required": required, "schema": schema, "description": description}


PREDICT_OPENAPI: dict[str, Any] = {
    "parameters": [
        parameter("model", "query", {"type": "string"}, "model name; default: the configured default model"),
        parameter(
            "top_k",
            "query",
            {"type": "integer", "minimum": 1, "maximum": 1000, "default": 5},
            "classification: how many classes to return per image",
        ),
        parameter(
            "Accept",
            "header",
            {"type": "string"},
            "image/png: a segmentation of one image answers with the mask PNG",
        ),
    ],
    "requestBody": {
        "required": True,
        "content": {
            **{media_type: _IMAGE_BODY for media_type in RAW_IMAGE_TYPES},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
        },
    },
}
