"""Log formatting and the access line, without a server: request ids, JSON extras, context."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from service.ops import access as access_module
from service.ops.access import Access, note_model
from service.ops.logs import (
    REQUEST_ID,
    AccessLines,
    JsonFormatter,
    LineWriter,
    RequestIdFilter,
    TextFormatter,
    configure_logging,
)
from tests.support.waiting import wait_until


@pytest.fixture(autouse=True)
def _access_lines_through_logging() -> Iterator[None]:
    """``configure_logging`` points access lines at its own writer: back to ``logging`` after."""
    yield
    access_module.write_lines_with(None)


def _record(
    message: str = "hello %s", args: tuple[object, ...] = ("world",), **extra: object
) -> logging.LogRecord:
    record = logging.LogRecord("service.test", logging.INFO, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


def _formatted(formatter: logging.Formatter, missing: str | None, record: logging.LogRecord) -> str:
    RequestIdFilter(missing).filter(record)
    return formatter.format(record)


def test_text_lines_show_the_request_id_or_a_dash_outside_a_request() -> None:
    assert " INFO service.test [-] hello world" in _formatted(TextFormatter(), "-", _record())
    token = REQUEST_ID.set("abc-1")
    try:
        assert " INFO service.test [abc-1] hello world" in _formatted(TextFormatter(), "-", _record())
    finally:
        REQUEST_ID.reset(token)


def test_text_time_is_logging_s_own_format() -> None:
    record = _record()
    assert TextFormatter().formatTime(record) == logging.Formatter().formatTime(record)


def test_json_lines_carry_extra_fields_a_null_request_id_and_the_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    record = _record(status=503, model="m", where=object())
    record.exc_info = exc_info
    entry = json.loads(_formatted(JsonFormatter(), None, record))
    assert entry["message"] == "hello world" and entry["request_id"] is None
    assert entry["status"] == 503 and entry["model"] == "m" and entry["where"].startswith("<object")
    assert "ValueError: boom" in entry["exception"]
    assert not {"args", "msg", "levelno", "exc_info", "thread"} & set(entry)
    assert entry["time"].endswith("Z") and len(entry["time"]) == len("2026-01-01T00:00:00.000Z")


def test_an_access_line_names_the_request_and_restores_the_context(caplog: pytest.LogCaptureFixture) -> None:
    access = Access("http", "POST", "/predict", "127.0.0.1:5000", "req-1")
    access.begin()
    assert REQUEST_ID.get() == "req-1"
    note_model("digits")
    note_model("digits", "0123456789ab")
    access.status = 200
    with caplog.at_level(logging.INFO, logger="service.access"):
        access.finish()
    assert REQUEST_ID.get() is None
    note_model("other")  # outside a request: nothing to record it on, and no error
    (record,) = caplog.records
    assert record.name == "service.access"
    assert record.getMessage().startswith("POST /predict 200 ")
    assert record.getMessage().endswith(" ms model=digits version=0123456789ab client=127.0.0.1:5000")
    assert record.__dict__["status"] == 200 and record.__dict__["version"] == "0123456789ab"


def test_an_access_line_escapes_a_forged_path_and_marks_a_missing_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    access = Access("http", "GET", "/x\n2026-01-01 INFO forged", None, "req-2")
    access.begin()
    with caplog.at_level(logging.INFO, logger="service.access"):
        access.finish()
    (record,) = caplog.records
    assert record.getMessage().startswith("GET /x\\n2026-01-01 INFO forged - ")
    assert record.getMessage().endswith(" client=-")
    assert record.__dict__["status"] is None


def test_access_lines_can_be_turned_off_but_audit_lines_stay() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("text", access_log=False)
        assert logging.getLogger("service.access").disabled
        assert not logging.getLogger("service.audit").disabled
        configure_logging("text")
        assert not logging.getLogger("service.access").disabled
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def _logged_line(access: Access, log_format: str) -> str:
    """What the ``logging`` path writes for ``access``: the reference for ``AccessLines``."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter(None if log_format == "json" else "-"))
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logger = logging.getLogger("service.access")
    saved = logger.handlers[:], logger.propagate, logger.level
    logger.handlers[:], logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    try:
        access.finish()
    finally:
        logger.handlers[:], logger.propagate, level = saved
        logger.setLevel(level)
    return stream.getvalue()


def _finished() -> Access:
    access = Access("http", "POST", "/predict", "127.0.0.1:5000", "req-9")
    access.begin()
    access.status, access.model, access.version = 200, "digits", "0123456789ab"
    return access


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_fast_access_line_is_the_line_logging_would_write(log_format: str) -> None:
    access = _finished()
    expected = _logged_line(access, log_format)  # also measures the duration, once
    stream = io.StringIO()
    writer = LineWriter(stream)
    formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    AccessLines(writer, formatter)(access, access.message())
    writer.flush()
    written = stream.getvalue()
    if log_format == "text":
        assert written.endswith("\n")
        assert written[len("2026-01-01 00:00:00,000") :] == expected[len("2026-01-01 00:00:00,000") :]
    else:
        mine, theirs = json.loads(written), json.loads(expected)
        assert mine.pop("time").endswith("Z") and theirs.pop("time").endswith("Z")
        assert mine == theirs and mine["status"] == 200 and mine["request_id"] == "req-9"


def test_access_lines_wait_for_the_writer_and_an_urgent_line_writes_them_first_in_order() -> None:
    stream = io.StringIO()
    writer = LineWriter(stream, interval_s=30.0)
    writer.add("access 1\n")
    writer.add("access 2\n")
    assert stream.getvalue() == ""  # batched: no write per request
    writer.add("WARNING audit\n", urgent=True)
    assert stream.getvalue() == "access 1\naccess 2\nWARNING audit\n"


def test_batched_lines_are_written_within_the_interval_or_when_the_batch_is_full() -> None:
    stream = io.StringIO()
    writer = LineWriter(stream, interval_s=0.05)
    writer.add("soon\n")
    wait_until(lambda: bool(stream.getvalue()), 5, "the writer's timer writing the batched line")
    assert stream.getvalue() == "soon\n"
    full = io.StringIO()
    small = LineWriter(full, interval_s=30.0, max_pending=10)
    small.add("12345\n")
    assert full.getvalue() == ""
    small.add("67890\n")
    assert full.getvalue() == "12345\n67890\n"


def test_configured_logging_sends_access_lines_the_fast_way_and_off_means_none() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("text")
        assert access_module._sink is not None
        configure_logging("text", access_log=False)
        assert access_module._sink is None
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
