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
from contextvars import ContextVar, Token

from service.logs import REQUEST_ID

log = logging.getLogger("service.access")
_CURRENT: ContextVar[Access | None] = ContextVar("access", default=None)
_FORMAT = "%s %.2f ms%s client=%s"


class Access:
    """One request's access line, filled in while it is answered (``status`` None: nothing was sent)."""

    __slots__ = (
        "_tokens",
        "client",
        "code",
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

    def begin(self) -> None:
        """Makes this the current request's line (for ``note_model``) and sets its id for logging."""
        self._tokens = REQUEST_ID.set(self.request_id), _CURRENT.set(self)

    def finish(self) -> None:
        """Writes the line (once the answer is sent); the context is as before ``begin`` again."""
        try:
            if log.isEnabledFor(logging.INFO):
                self._write()
        finally:
            request_id, current = self._tokens
            _CURRENT.reset(current)
            REQUEST_ID.reset(request_id)

    def _write(self) -> None:
        duration_ms = round((time.perf_counter() - self.started) * 1000, 3)
        path = self.path if self.path.isprintable() else self.path.encode("unicode_escape").decode()
        if self.code is None:
            head = f"{self.method} {path} {'-' if self.status is None else self.status}"
        else:
            head = f"gRPC {self.method} {self.code} ({self.status})"
        known = "" if self.model is None else f" model={self.model}"
        if self.version is not None:
            known += f" version={self.version}"
        fields = {
            "protocol": self.protocol,
            "method": self.method,
            "path": path,
            "status": self.status,
            "duration_ms": duration_ms,
            "model": self.model,
            "version": self.version,
            "client": self.client,
        }
        if self.code is not None:
            fields["grpc_code"] = self.code
        args = (head, duration_ms, known, self.client or "-")
        # makeRecord and handle, not log.info: the caller's frame (findCaller) is a third of the cost
        log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, _FORMAT, args, None, extra=fields))


def note_model(model: str, version: str | None = None) -> None:
    """Records on the current request's access line the model (and version) it is for."""
    access = _CURRENT.get()
    if access is not None:
        access.model = model
        if version is not None:
            access.version = version


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
