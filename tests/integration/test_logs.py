"""What an operator reads in a real server's log: start-up lines in order, one access line per
request on every door, one audit line per admin action whatever its outcome, never the token.

Two servers (text and JSON logs) share this module; each request below is answered first and
its lines are then awaited in the log file (written just after the answer is sent).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton

from tests.support.harness import ADMIN, model_entry, png, save_random_weights, write_config
from tests.support.serving import REPO, ServerProcess, free_port

ARCH = "tests.support.archs:slow_classifier"
ARGS = {"delay_s": 0.0, "in_channels": 1, "num_classes": 3}
TOKEN = ADMIN["Authorization"].split()[1]
WRONG_TOKEN = "wrong-token-that-must-not-be-logged"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("logs")
    save_random_weights(ARCH, ARGS, base / "ckpt" / "a.pt")
    (base / "ckpt" / "broken.pt").write_bytes(b"not a checkpoint")
    write_config(base, {"m": model_entry(ARCH, "ckpt/a.pt", init_args=ARGS)}, checkpoint_root="ckpt")
    return base


def _server(folder: Path, log_format: str) -> Iterator[ServerProcess]:
    env = {"MODEL_SERVE_LOG_FORMAT": log_format}
    server = ServerProcess(folder / "config.yaml", folder / f"server-{log_format}.log", env)
    with server:
        yield server


@pytest.fixture(scope="module")
def text_server(folder: Path) -> Iterator[ServerProcess]:
    yield from _server(folder, "text")


@pytest.fixture(scope="module")
def json_server(folder: Path) -> Iterator[ServerProcess]:
    yield from _server(folder, "json")


def _wait_for(server: ServerProcess, wanted: Callable[[str], bool], what: str) -> str:
    """The first log line ``wanted`` accepts, polled for until it is written."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in server.log().splitlines():
            if wanted(line):
                return line
        time.sleep(0.02)
    raise AssertionError(f"no log line {what} in:\n{server.log()}")


def _json_record(server: ServerProcess, **fields: Any) -> dict[str, Any]:
    """The first JSON record with all of ``fields``."""

    def matches(line: str) -> bool:
        record = _parsed(line)
        return record is not None and all(record.get(key) == value for key, value in fields.items())

    record: dict[str, Any] = json.loads(_wait_for(server, matches, f"with {fields}"))
    return record


def _parsed(line: str) -> dict[str, Any] | None:
    """A JSON log line's record; None for the lines gRPC's C core may write to stderr itself."""
    if not line.startswith("{"):
        return None
    record: dict[str, Any] = json.loads(line)
    return record


def _predict(server: ServerProcess, request_id: str) -> httpx.Response:
    answer = httpx.post(
        f"{server.url}/predict?model=m",
        content=png(128),
        headers={"Content-Type": "image/png", "X-Request-ID": request_id},
    )
    assert answer.status_code == 200, answer.text
    return answer


def _reload(server: ServerProcess, body: bytes, token: str | None, request_id: str) -> httpx.Response:
    headers = {"X-Request-ID": request_id, "Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(f"{server.url}/models/m/reload", content=body, headers=headers)


def _infer_grpc(server: ServerProcess, request_id: str) -> None:
    tensor = triton.InferInput("input", [1, 1, 16, 16], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1, 16, 16), np.float32))
    with triton.InferenceServerClient(server.grpc_address) as client:
        client.infer("m", [tensor], headers={"x-request-id": request_id})


def test_text_startup_lines_come_in_order_and_outside_a_request_show_a_dash(
    text_server: ServerProcess,
) -> None:
    log = text_server.log()
    loading = log.index("INFO service.lifecycle [-] loading 1 model (m)...")
    running = log.index("Uvicorn running on")
    where = f"on {text_server.url} (gRPC {text_server.grpc_port})"
    ready = log.index(f"INFO service.lifecycle [-] ready: serving models ['m'] {where}")
    assert loading < running < ready
    assert "[None]" not in log


def test_text_access_lines_for_predict_and_grpc(text_server: ServerProcess) -> None:
    version = _predict(text_server, "t-predict").json()["version"]
    line = _wait_for(
        text_server, lambda line: "[t-predict]" in line and "service.access" in line, "for predict"
    )
    pattern = rf"INFO service\.access \[t-predict\] POST /predict 200 [\d.]+ ms model=m version={version} "
    assert re.search(pattern + r"client=127\.0\.0\.1:\d+$", line), line
    _infer_grpc(text_server, "t-grpc")
    line = _wait_for(text_server, lambda line: "[t-grpc]" in line, "for ModelInfer")
    pattern = (
        rf"\[t-grpc\] gRPC ModelInfer OK \(200\) [\d.]+ ms model=m version={version} client=127\.0\.0\.1:\d+$"
    )
    assert re.search(pattern, line), line


@pytest.mark.parametrize(
    ("request_id", "token", "body", "status", "audit"),
    [
        ("t-none", None, b"", 401, "reload m unauthorized checkpoint=-"),
        ("t-wrong", WRONG_TOKEN, b"", 401, "reload m unauthorized checkpoint=-"),
        ("t-outside", TOKEN, b'{"checkpoint": "../a.pt"}', 403, "reload m forbidden checkpoint='../a.pt'"),
        ("t-broken", TOKEN, b'{"checkpoint": "broken.pt"}', 422, "reload m failure checkpoint='broken.pt'"),
        ("t-json", TOKEN, b"{bad", 422, "reload m invalid checkpoint=-"),
    ],
)
def test_text_every_refused_reload_leaves_an_audit_and_an_access_line(
    text_server: ServerProcess, request_id: str, token: str | None, body: bytes, status: int, audit: str
) -> None:
    answer = _reload(text_server, body, token, request_id)
    assert answer.status_code == status, answer.text
    audited = _wait_for(
        text_server, lambda line: f"[{request_id}]" in line and "service.audit" in line, "audit"
    )
    assert f"WARNING service.audit [{request_id}] {audit} client=127.0.0.1:" in audited, audited
    assert audited.endswith(f" reason={answer.json()['error']['message']!r}"), audited
    accessed = _wait_for(text_server, lambda line: f"[{request_id}] POST /models/m/reload" in line, "access")
    assert f"POST /models/m/reload {status} " in accessed


def test_the_bad_json_message_is_clean(text_server: ServerProcess) -> None:
    answer = _reload(text_server, b'{"checkpoint": 5}', TOKEN, "t-clean")
    assert answer.status_code == 422
    assert answer.json()["error"]["message"] == (
        'the body must be JSON like {"checkpoint": "path"}: Input should be a valid string at \'checkpoint\''
    )
    assert "pydantic" not in text_server.log()


def test_a_successful_reload_is_audited_with_its_versions(text_server: ServerProcess) -> None:
    answer = _reload(text_server, b'{"checkpoint": "a.pt"}', TOKEN, "t-same")
    assert answer.status_code == 200, answer.text
    version = answer.json()["version"]
    line = _wait_for(text_server, lambda line: "[t-same]" in line and "service.audit" in line, "audit")
    assert f"INFO service.audit [t-same] reload m unchanged {version} -> {version} checkpoint='a.pt'" in line


def test_json_lines_carry_the_access_and_audit_fields(json_server: ServerProcess) -> None:
    version = _predict(json_server, "j-predict").json()["version"]
    access = _json_record(json_server, logger="service.access", request_id="j-predict")
    assert access["method"] == "POST" and access["path"] == "/predict" and access["status"] == 200
    assert access["model"] == "m" and access["version"] == version and access["protocol"] == "http"
    assert isinstance(access["duration_ms"], float) and access["duration_ms"] > 0
    assert re.fullmatch(r"127\.0\.0\.1:\d+", access["client"])

    assert _reload(json_server, b"", WRONG_TOKEN, "j-401").status_code == 401
    audit = _json_record(json_server, logger="service.audit", request_id="j-401")
    assert audit["level"] == "WARNING" and audit["action"] == "reload" and audit["model"] == "m"
    assert audit["outcome"] == "unauthorized" and audit["reason"] == "the admin token is wrong"
    assert audit["checkpoint"] is None and audit["client"].startswith("127.0.0.1:")
    assert _json_record(json_server, logger="service.access", request_id="j-401")["status"] == 401

    assert _reload(json_server, b'{"checkpoint": "/etc/passwd"}', TOKEN, "j-403").status_code == 403
    audit = _json_record(json_server, logger="service.audit", request_id="j-403")
    assert audit["outcome"] == "forbidden" and audit["checkpoint"] == "/etc/passwd"

    assert _reload(json_server, b'{"checkpoint": "broken.pt"}', TOKEN, "j-422").status_code == 422
    audit = _json_record(json_server, logger="service.audit", request_id="j-422")
    assert audit["outcome"] == "failure" and "broken.pt" in audit["reason"]

    _infer_grpc(json_server, "j-grpc")
    access = _json_record(json_server, logger="service.access", request_id="j-grpc")
    assert access["protocol"] == "grpc" and access["method"] == "ModelInfer" and access["grpc_code"] == "OK"
    assert access["status"] == 200 and access["path"] == "/inference.GRPCInferenceService/ModelInfer"


def test_json_lines_outside_a_request_have_a_null_request_id(json_server: ServerProcess) -> None:
    _wait_for(json_server, lambda line: "ready: serving" in line, "saying it is ready")
    records = [r for r in map(_parsed, json_server.log().splitlines()) if r is not None]
    assert all(r["request_id"] != "-" for r in records)
    loading = next(r for r in records if r["message"] == "loading 1 model (m)...")
    ready = next(r for r in records if r["message"].startswith("ready: serving models ['m']"))
    assert loading["request_id"] is None and ready["request_id"] is None
    assert records.index(loading) < records.index(ready)


def test_the_admin_token_is_never_logged(text_server: ServerProcess, json_server: ServerProcess) -> None:
    for server in (text_server, json_server):
        assert _reload(server, b"", TOKEN, "tok-ok").status_code == 200
        assert _reload(server, b"", WRONG_TOKEN, "tok-wrong").status_code == 401
        _wait_for(server, lambda line: "tok-wrong" in line and "service.access" in line, "for the refusal")
        log = server.log()
        assert TOKEN not in log and WRONG_TOKEN not in log


def test_a_model_that_cannot_load_ends_the_log_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "m.pt").write_bytes(b"truncated")
    config = write_config(tmp_path, {"m": model_entry(ARCH, "m.pt")})
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--config", str(config), "--port", str(free_port())],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert re.search(r"ERROR service \[-\] model loading failed: .*m\.pt.*; exiting$", lines[-1]), lines[-1]
    assert "loading 1 model (m)..." in result.stderr and "ready:" not in result.stderr
    assert sum("model loading failed" in line for line in lines) == 1
