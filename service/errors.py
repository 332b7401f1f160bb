"""Domain errors: each carries the contract's error code, HTTP status and a message that says what to do.

One handler in ``app.py`` turns any of them into ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations


class ServeError(Exception):
    """Base of every error model-serve reports to a user; ``status`` is the HTTP status."""

    code = "internal_error"
    status = 500

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


class BadImage(ServeError):
    """No image was sent, or the bytes do not decode as an image."""

    code = "bad_image"
    status = 400


class Unauthorized(ServeError):
    """The admin token is missing or wrong."""

    code = "unauthorized"
    status = 401


class Forbidden(ServeError):
    """The request names a file outside what the server may read."""

    code = "forbidden"
    status = 403


class SlowUpload(ServeError):
    """The request body did not arrive within the request timeout."""

    code = "request_timeout"
    status = 408


class NotFound(ServeError):
    """The named model (or route object) does not exist."""

    code = "not_found"
    status = 404


class TooLarge(ServeError):
    """The body is over the byte limit or an image is over the pixel limit."""

    code = "too_large"
    status = 413


class UnsupportedMediaType(ServeError):
    """The Content-Type is not an image type or multipart/form-data."""

    code = "unsupported_media_type"
    status = 415


class InvalidParameter(ServeError):
    """A query parameter or JSON field has a bad value."""

    code = "invalid_parameter"
    status = 422


class QueueFull(ServeError):
    """The model's queue is at its bound; the client should retry after ``Retry-After``."""

    code = "queue_full"
    status = 503


class NotReady(ServeError):
    """The server is starting, draining, or the model is not loaded yet."""

    code = "not_ready"
    status = 503


class PredictionTimeout(ServeError):
    """The request's deadline passed before its prediction was ready."""

    code = "timeout"
    status = 504


class ClientGone(ServeError):
    """The client disconnected before its answer was ready (nginx's 499); nothing is sent."""

    code = "client_closed_request"
    status = 499


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
