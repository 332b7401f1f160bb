"""Logging set-up: plain text or one JSON object per line, each with the request id.

Outside a request there is no id: text lines show ``-`` there, JSON lines ``"request_id": null``.
Fields a caller passes as ``extra`` (the access and audit lines' method, status, model...) become
keys of the JSON object; text lines carry them in their message already.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import orjson

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

# Attributes every LogRecord has: anything else on a record came from ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "request_id",
}


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id``: the current request's, else ``missing``."""

    def __init__(self, missing: str | None) -> None:
        super().__init__()
        self.missing = missing

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get() or self.missing
        return True


class _Seconds:
    """``strftime`` of a record's second, computed once per second: every access line needs
    one, and ``strftime`` was a tenth of a line's cost."""

    def __init__(self, pattern: str, convert: Callable[[float], time.struct_time]) -> None:
        self.pattern = pattern
        self.convert = convert
        self._last: tuple[int, str] = (-1, "")

    def __call__(self, created: float) -> str:
        second = int(created)
        last = self._last
        if last[0] != second:
            last = self._last = (second, time.strftime(self.pattern, self.convert(second)))
        return last[1]


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``, with ``asctime`` as ``logging`` writes it (local time, milliseconds)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._seconds = _Seconds("%Y-%m-%d %H:%M:%S", time.localtime)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return f"{self._seconds(record.created)},{int(record.msecs):03d}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, the record's
    ``extra`` fields, and the exception's traceback if any."""

    def __init__(self) -> None:
        super().__init__()
        self._seconds = _Seconds("%Y-%m-%dT%H:%M:%S", time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": f"{self._seconds(record.created)}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(log_format: str, level: int = logging.INFO, *, access_log: bool = True) -> None:
    """Root logging for the server process (called by the CLI, never at import); without
    ``access_log`` the per-request lines of ``service.access`` are off (audit lines stay)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.addFilter(RequestIdFilter(None))
        handler.setFormatter(JsonFormatter())
    else:
        handler.addFilter(RequestIdFilter("-"))
        handler.setFormatter(TextFormatter())
    # Neither format shows thread or process names: not looking them up for every record saves
    # a quarter of building one (the logging HOWTO's "Optimization" section).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("service.access").disabled = not access_log
