"""Answers as ready-made bytes: orjson into a plain ``Response``, no model validation on the
hot path (FastAPI's response handling costs about 0.1 ms a request on this kind of machine).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

from service.errors import ServeError, http_body, v2_body

JSON = "application/json"


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """``body`` serialised by orjson (numpy arrays and dataclasses included)."""
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, JSON)


def error_response(error: ServeError) -> Response:
    """The HTTP API's error body (``{"error": {"code", "message"}}``) with the error's status."""
    return json_response(http_body(error), error.status, error.headers)


def v2_error_response(error: ServeError) -> Response:
    """The Open Inference Protocol's error body (``{"error": message}``) with the error's status."""
    return json_response(v2_body(error), error.status, error.headers)
