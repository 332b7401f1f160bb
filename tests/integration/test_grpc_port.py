"""Port ownership with two real servers: a second ``model-serve serve`` on a gRPC port that a
first one holds must not share it (grpc's default SO_REUSEPORT would split the first one's
clients between them); it ends its start exactly as on a taken HTTP port: one error line
naming the port, no traceback, uvicorn's start-up failure status (3)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as triton_grpc

from tests.support.harness import model_entry, save_random_weights, write_config
from tests.support.serving import REPO, ServerProcess, free_port

ARCH = "tests.support.archs:slow_classifier"
ARGS = {"delay_s": 0.0, "in_channels": 1, "num_classes": 3}
STARTUP_FAILURE = 3  # uvicorn's exit status when it cannot start
BIND_ERROR = re.compile(
    r"ERROR uvicorn\.error \[-\] \[Errno 98\] error while attempting to bind on (gRPC )?address "
    r"\('127\.0\.0\.1', (\d+)\): address already in use$"
)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("grpc_port")
    save_random_weights(ARCH, ARGS, base / "m.pt")
    return write_config(base, {"m": model_entry(ARCH, "m.pt", init_args=ARGS)})


@pytest.fixture(scope="module")
def first(config: Path) -> Iterator[ServerProcess]:
    with ServerProcess(config, config.parent / "first.log") as server:
        yield server


def _second(config: Path, http_port: int, grpc_port: int) -> subprocess.CompletedProcess[str]:
    """A second server, run until it exits by itself (a clash ends it before any model loads)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MODEL_SERVE_")}
    env.update({"PYTHONPATH": str(REPO), "MODEL_SERVE_TORCH_THREADS": "1"})
    args = ["serve", "--config", str(config), "--port", str(http_port), "--grpc-port", str(grpc_port)]
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _bind_errors(ended: subprocess.CompletedProcess[str]) -> list[tuple[str, int]]:
    found = [BIND_ERROR.search(line) for line in ended.stderr.splitlines()]
    return [(match[1] or "", int(match[2])) for match in found if match]


def test_a_taken_grpc_port_ends_the_start_as_a_taken_http_port_does(
    first: ServerProcess, config: Path
) -> None:
    http_clash = _second(config, first.port, free_port())
    grpc_clash = _second(config, free_port(), first.grpc_port)

    assert http_clash.returncode == STARTUP_FAILURE, http_clash.stderr
    assert _bind_errors(http_clash) == [("", first.port)], http_clash.stderr
    assert grpc_clash.returncode == http_clash.returncode, grpc_clash.stderr
    assert _bind_errors(grpc_clash) == [("gRPC ", first.grpc_port)], grpc_clash.stderr
    assert "Traceback" not in grpc_clash.stderr and "loading 1 model" not in grpc_clash.stderr
    client = triton_grpc.InferenceServerClient(first.grpc_address)
    try:
        assert client.is_server_ready() and first.process.poll() is None
    finally:
        client.close()
