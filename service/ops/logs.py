"""Logging set-up: plain text or one JSON object per line, each with the request id.

Every line is one line: text lines escape control characters (``escaped``), JSON lines are
escaped by the encoder, so nothing a client sends can forge a line in either format.

Outside a request there is no id: text lines show ``-`` there, JSON lines ``"request_id": null``.
Fields a caller passes as ``extra`` (the access and audit lines' method, status, model...) become
keys of the JSON object; text lines carry them in their message already.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TextIO

import orjson

if TYPE_CHECKING:
    from service.ops.access import Access

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

# Attributes every LogRecord has: anything else on a record came from ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "request_id",
}


def escaped(text: str) -> str:
    """``text`` with its control characters escaped (``\\n``, ``\\x1b``, ...): a model name,
    path or reason a client chose can never break a text line or forge another. Fast when
    there is nothing to escape, as on nearly every line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id``: the current request's, else ``missing``."""

    def __init__(self, missing: str | None) -> None:
        super().__init__()
        self.missing = missing

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get() or self.missing
        return True


class _Stamp:
    """A record's time stamp: ``strftime`` of its second, computed once per second (every
    access line needs one, and ``strftime`` was a tenth of a line's cost), then its
    milliseconds as ``logging`` counts them."""

    def __init__(self, pattern: str, convert: Callable[[float], time.struct_time], milliseconds: str) -> None:
        self.pattern = pattern
        self.convert = convert
        self.milliseconds = milliseconds  # a format of the milliseconds, with what surrounds them
        self._last: tuple[int, str] = (-1, "")

    def __call__(self, created: float) -> str:
        second = int(created)
        last = self._last
        if last[0] != second:
            last = self._last = (second, time.strftime(self.pattern, self.convert(second)))
        return last[1] + self.milliseconds % int((created - second) * 1000)


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``, with ``asctime`` as ``logging`` writes it (local time, milliseconds)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._stamp = _Stamp("%Y-%m-%d %H:%M:%S", time.localtime, ",%03d")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self.stamp(record.created)

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line before any traceback (whose own line breaks are kept), escaped."""
        record.message = escaped(record.message)
        return super().formatMessage(record)

    def stamp(self, created: float) -> str:
        """``created`` (a ``time.time()``) as ``asctime``, milliseconds as ``logging`` counts them."""
        return self._stamp(created)

    def line(self, created: float, level: str, logger: str, request_id: str, message: str) -> str:
        """A line without a record: what ``format`` writes for one with these fields."""
        fields = {"asctime": self.stamp(created), "levelname": level, "name": logger}
        return TEXT_FORMAT % {**fields, "request_id": request_id, "message": escaped(message)}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, the record's
    ``extra`` fields, and the exception's traceback if any."""

    def __init__(self) -> None:
        super().__init__()
        self._stamp = _Stamp("%Y-%m-%dT%H:%M:%S", time.gmtime, ".%03dZ")

    def format(self, record: logging.LogRecord) -> str:
        extra = {key: value for key, value in record.__dict__.items() if key not in _STANDARD}
        if record.exc_info:
            extra["exception"] = self.formatException(record.exc_info)
        request_id = getattr(record, "request_id", None)
        message = record.getMessage()
        return self.line(record.created, record.levelname, record.name, request_id, message, extra)

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        request_id: str | None,
        message: str,
        extra: dict[str, Any],
    ) -> str:
        """A line without a record: what ``format`` writes for one with these fields."""
        entry: dict[str, Any] = {
            "time": self._stamp(created),
            "level": level,
            "logger": logger,
            "message": message,
            "request_id": request_id,
            **extra,
        }
        return orjson.dumps(entry, default=str).decode()


class LineWriter:
    """Log lines to a stream, from any thread; the access lines in batches, one write every
    ``interval_s`` (or every ``max_pending`` characters) instead of one per request.

    Every other line is ``urgent``: written at once, after whatever is pending, so the order of
    lines is kept and a start-up, audit or error line is there as soon as it is logged. A
    daemon thread writes what is pending ``interval_s`` after the first line of a batch;
    ``flush`` (logging's shutdown calls it at exit) writes it now.
    """

    def __init__(self, stream: TextIO, *, interval_s: float = 0.1, max_pending: int = 64 * 1024) -> None:
        self.stream = stream
        self.interval_s = interval_s
        self.max_pending = max_pending
        self._pending: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        self._due = threading.Event()
        threading.Thread(target=self._write_when_due, name="log-writer", daemon=True).start()

    def add(self, line: str, *, urgent: bool = False) -> None:
        """Queues ``line`` (with its newline); ``urgent`` writes it and all before it now."""
        with self._lock:
            self._pending.append(line)
            self._size += len(line)
            full = self._size >= self.max_pending
            first = len(self._pending) == 1
        if urgent or full:
            self.flush()
        elif first:
            self._due.set()

    def flush(self) -> None:
        with self._lock:
            lines, self._pending, self._size = self._pending, [], 0
            if lines:  # under the lock: two flushes never interleave their lines
                self.stream.write("".join(lines))
                self.stream.flush()

    def _write_when_due(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            time.sleep(self.interval_s)
            try:
                self.flush()
            except (OSError, ValueError):  # stderr closed or gone: nowhere left to say so
                continue


class LineHandler(logging.Handler):
    """A ``logging`` handler that writes formatted lines through a ``LineWriter``, at once."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.add(self.format(record) + "\n", urgent=True)
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self.writer.flush()


class AccessLines:
    """The access lines' own path to the ``LineWriter``: the formatter's line for the fields
    ``Access`` has, built without a ``logging`` record.

    Measured on the event loop under load here, a line through ``logging``'s record, filter and
    handler chain (and a write per line) cost about 37 us, 8% of a small model's request; this
    path about 14 us.
    """

    def __init__(self, writer: LineWriter, formatter: TextFormatter | JsonFormatter) -> None:
        self.writer = writer
        self.formatter = formatter

    def __call__(self, access: Access, message: str) -> None:
        now, formatter = time.time(), self.formatter
        if isinstance(formatter, TextFormatter):
            line = formatter.line(now, "INFO", "service.access", access.request_id, message)
        else:
            line = formatter.line(now, "INFO", "service.access", access.request_id, message, access.fields())
        self.writer.add(line + "\n")


def configure_logging(log_format: str, level: int = logging.INFO, *, access_log: bool = True) -> None:
    """Root logging for the server process (called by the CLI, never at import), to stderr in
    batches (``LineWriter``); without ``access_log`` the per-request lines of
    ``service.access`` are off (audit lines stay)."""
    from service.ops import access  # here: access imports REQUEST_ID from this module

    writer = LineWriter(sys.stderr)
    handler = LineHandler(writer)
    formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    handler.addFilter(RequestIdFilter(None if log_format == "json" else "-"))
    handler.setFormatter(formatter)
    # Neither format shows thread or process names: not looking them up for every record saves
    # a quarter of building one (the logging HOWTO's "Optimization" section).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("service.access").disabled = not access_log
    access_logger = logging.getLogger("service.access")
    fast = access_log and access_logger.getEffectiveLevel() <= logging.INFO
    access.write_lines_with(AccessLines(writer, formatter) if fast else None)
