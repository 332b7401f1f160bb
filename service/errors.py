"""Domain errors, and the one table of what each kind is answered with on every door.

Each class is a row: its ``code`` and ``status`` (the HTTP door's body and status), its
``grpc_code`` (the name of the ``grpc.StatusCode`` the gRPC door aborts with) and, through
``v2_body``, the Open Inference Protocol's body. Every message says what to do. The doors read
these rows; none keeps a mapping of its own.
"""

from __future__ import annotations

from typing import Any


class ServeError(Exception):
    """Base of every error model-serve reports to a user; ``status`` is the HTTP status."""

    code = "internal_error"
    status = 500
    grpc_code = "INTERNAL"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class ConfigError(ServeError):
    """The configuration file is missing, unreadable or names a bad key or value."""

    code = "config_error"
    status = 500


class CheckpointError(ServeError):
    """A checkpoint cannot be read, is refused, or does not match the architecture."""

    code = "checkpoint_error"
    status = 422
    grpc_code = "INVALID_ARGUMENT"


class BadImage(ServeError):
    """No image was sent, or the bytes do not decode as an image."""

    code = "bad_image"
    status = 400
    grpc_code = "INVALID_ARGUMENT"


class Unauthorized(ServeError):
    """The admin token is missing or wrong."""

    code = "unauthorized"
    status = 401
    grpc_code = "UNAUTHENTICATED"


class Forbidden(ServeError):
    """The request names a file outside what the server may read."""

    code = "forbidden"
    status = 403
    grpc_code = "PERMISSION_DENIED"


class SlowUpload(ServeError):
    """The request body did not arrive within the request timeout."""

    code = "request_timeout"
    status = 408
    grpc_code = "DEADLINE_EXCEEDED"


class NotFound(ServeError):
    """The named model (or route object) does not exist."""

    code = "not_found"
    status = 404
    grpc_code = "NOT_FOUND"


class TooLarge(ServeError):
    """The body is over the byte limit or an image is over the pixel limit."""

    code = "too_large"
    status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class UnsupportedMediaType(ServeError):
    """The Content-Type is not an image type or multipart/form-data."""

    code = "unsupported_media_type"
    status = 415
    grpc_code = "INVALID_ARGUMENT"


class InvalidParameter(ServeError):
    """A query parameter or JSON field has a bad value."""

    code = "invalid_parameter"
    status = 422
    grpc_code = "INVALID_ARGUMENT"


class QueueFull(ServeError):
    """The model's queue is at its bound; the client should retry after ``Retry-After``."""

    code = "queue_full"
    status = 503
    grpc_code = "UNAVAILABLE"


class NotReady(ServeError):
    """The server is starting, draining, or the model is not loaded yet."""

    code = "not_ready"
    status = 503
    grpc_code = "UNAVAILABLE"


class ModelUnloaded(ServeError):
    """The model was unloaded through the repository extension; it serves again once loaded.
    400 as Triton answers it; FAILED_PRECONDITION, not UNAVAILABLE: retrying cannot help."""

    code = "model_unloaded"
    status = 400
    grpc_code = "FAILED_PRECONDITION"


class PredictionTimeout(ServeError):
    """The request's deadline passed before its prediction was ready."""

    code = "timeout"
    status = 504
    grpc_code = "DEADLINE_EXCEEDED"


class ClientGone(ServeError):
    """The client disconnected before its answer was ready (nginx's 499); nothing is sent."""

    code = "client_closed_request"
    status = 499
    grpc_code = "CANCELLED"


class InferenceFailed(ServeError):
    """The model raised while running a batch; only that batch's requests fail."""

    code = "inference_failed"
    status = 500


class NonFiniteOutput(InferenceFailed):
    """The model's logits held NaN or inf: no answer is better than a wrong one."""

    code = "non_finite_output"


class BadRequest(ServeError):
    """A malformed protocol request: wrong input name, datatype, shape, or truncated data."""

    code = "bad_request"
    status = 400
    grpc_code = "INVALID_ARGUMENT"


def http_body(error: ServeError) -> dict[str, Any]:
    """The HTTP API's error body (``/predict``, admin and probe routes)."""
    return {"error": {"code": error.code, "message": error.message}}


def v2_body(error: ServeError) -> dict[str, Any]:
    """The Open Inference Protocol's error body: the message alone."""
    return {"error": error.message}
