"""Access lines: one per HTTP request or gRPC call, on the ``service.access`` logger.

Each door opens an ``Access`` when a request arrives and calls ``finish`` once it is answered;
handlers that learn the model (and version) a request is for say so with ``note_model``, which
finds the request's ``Access`` through a context variable. A line carries the method, path,
status (gRPC: its code name and the equivalent HTTP status), duration, model, version,
request id and client address, as text in the message and as ``extra`` fields for JSON.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any

from service.ops.logs import REQUEST_ID, escaped

log = logging.getLogger("service.access")
_CURRENT: ContextVar[Access | None] = ContextVar("access", default=None)

LineSink = Callable[["Access", str], None]
"""Writes one access line: the ``Access`` and its message (``Access.fields`` for JSON)."""
_sink: LineSink | None = None  # None: through ``logging`` (``write_lines_with``)


def write_lines_with(sink: LineSink | None) -> None:
    """Access lines go to ``sink`` from now on, not through ``logging`` (``configure_logging``
    sets one up for the server's own log; None goes back to ``logging``, e.g. for tests)."""
    global _sink
    _sink = sink


class Access:
    """One request's access line, filled in while it is answered (``status`` None: nothing was sent)."""

    __slots__ = (
        "_tokens",
        "client",
        "code",
        "duration_ms",
        "method",
        "model",
        "path",
        "protocol",
        "request_id",
        "started",
        "status",
        "version",
    )
    _tokens: tuple[Token[str | None], Token[Access | None]]  # set by begin, reset by finish

    def __init__(self, protocol: str, method: str, path: str, client: str | None, request_id: str) -> None:
        self.protocol = protocol
        self.method = method
        self.path = path
        self.client = client
        self.request_id = request_id
        self.started = time.perf_counter()
        self.status: int | None = None
        self.code: str | None = None  # gRPC's status code name
        self.model: str | None = None
        self.version: str | None = None
        self.duration_ms: float | None = None

    def begin(self) -> None:
        """Makes this the current request's line (for ``note_model``) and sets its id for logging."""
        self._tokens = REQUEST_ID.set(self.request_id), _CURRENT.set(self)

    def finish(self) -> None:
        """Writes the line (once the answer is sent); the context is as before ``begin`` again."""
        try:
            if _sink is not None:
                _sink(self, self.message())
            elif log.isEnabledFor(logging.INFO):
                # makeRecord and handle, not log.info: the caller's frame (findCaller) is a third of the cost
                record = log.makeRecord(log.name, logging.INFO, __file__, 0, self.message(), (), None)
                record.__dict__.update(self.fields())
                log.handle(record)
        finally:
            request_id, current = self._tokens
            _CURRENT.reset(current)
            REQUEST_ID.reset(request_id)

    def message(self) -> str:
        """The line's text; its duration is measured up to the first call."""
        if self.duration_ms is None:
            self.duration_ms = round((time.perf_counter() - self.started) * 1000, 3)
        if self.code is None:
            head = f"{self.method} {self.shown_path} {'-' if self.status is None else self.status}"
        else:
            head = f"gRPC {self.method} {self.code} ({self.status})"
        known = "" if self.model is None else f" model={self.model}"
        if self.version is not None:
            known += f" version={self.version}"
        return f"{head} {self.duration_ms:.2f} ms{known} client={self.client or '-'}"

    def fields(self) -> dict[str, Any]:
        """The line's fields, as JSON lines carry them (after ``message``)."""
        fields: dict[str, Any] = {
            "protocol": self.protocol,
            "method": self.method,
            "path": self.shown_path,
            "status": self.status,
            "duration_ms": self.duration_ms,
            "model": self.model,
            "version": self.version,
            "client": self.client,
        }
        if self.code is not None:
            fields["grpc_code"] = self.code
        return fields

    @property
    def shown_path(self) -> str:
        """The path, escaped when it holds control characters (a forged line break)."""
        return escaped(self.path)


def note_model(model: str, version: str | None = None) -> None:
    """Records on the current request's access line the model (and version) it is for."""
    access = _CURRENT.get()
    if access is not None:
        access.model = model
        if version is not None:
            access.version = version


def note_status(status: int) -> None:
    """Records on the current request's access line the HTTP status its answer stands for
    (a gRPC door that aborts with an error notes the error's own status before the code)."""
    access = _CURRENT.get()
    if access is not None:
        access.status = status


class RequestIds:
    """Request ids: the client's own (``X-Request-ID`` or gRPC metadata) when sane, else a
    process-unique ``<random prefix>-<counter>``."""

    def __init__(self) -> None:
        self._prefix = os.urandom(4).hex()
        self._counter = 0

    def choose(self, given: str | None) -> str:
        if given is not None and 0 < len(given) <= 64 and all(c.isalnum() or c in "-_.:" for c in given):
            return given
        self._counter += 1
        return f"{self._prefix}-{self._counter:x}"
