"""Answers as ready-made bytes: orjson into a plain ``Response``, no model validation on the
hot path (FastAPI's response handling costs about 0.1 ms a request on this kind of machine).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from starlette.responses import Response

from service.errors import ServeError
from service.pipeline.tasks import Classification, Segmentation

JSON = "application/json"


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """``body`` serialised by orjson (numpy arrays and dataclasses included)."""
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, JSON)


def error_response(error: ServeError) -> Response:
    """The contract's error body: ``{"error": {"code", "message"}}`` with the error's status."""
    body = {"error": {"code": error.code, "message": error.message}}
    return json_response(body, error.status, error.headers)


def classification_body(
    results: Sequence[Classification], labels: Sequence[str] | None
) -> list[dict[str, Any]]:
    """Per image: the best class at top level, and the top-k list best first."""
    predictions = []
    for result in results:
        top_k = [
            {"label": _label(labels, index), "class_index": index, "score": score}
            for index, score in zip(result.indices, result.scores, strict=True)
        ]
        predictions.append({**top_k[0], "top_k": top_k})
    return predictions


def segmentation_body(results: Sequence[Segmentation]) -> list[dict[str, Any]]:
    """Per image: its size, the class-index mask as base64 PNG, and pixels per class
    (``/predict``'s jobs always ask for the PNG)."""
    body = []
    for result in results:
        assert result.png is not None, "segmentation_body needs jobs that asked for the mask PNG"
        body.append(
            {
                "width": int(result.mask.shape[1]),
                "height": int(result.mask.shape[0]),
                "mask_png_base64": base64.b64encode(result.png).decode("ascii"),
                "class_pixel_counts": result.class_pixel_counts,
            }
        )
    return body


def _label(labels: Sequence[str] | None, index: int) -> str:
    if labels is not None and index < len(labels):
        return labels[index]
    return str(index)
