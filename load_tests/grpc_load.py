"""Load for the v2 gRPC ``ModelInfer`` RPC with h2load, nghttp2's C load generator: what wrk is
for REST. A Python gRPC client would spend a core of its own on this 2-core machine and cap
the figure it measures (measured: 1,089 calls/s from grpc.aio against 1,223 from h2load).

Every connection sends the same prepared call (one image, ``BYTES`` as ``raw_input_contents``)
as gRPC frames it on HTTP/2: ``POST /inference.GRPCInferenceService/ModelInfer`` with
``content-type: application/grpc`` and a 5-byte length prefix. Answers are checked before the
run (``benchmark.check_v2_answers``); h2load's per-request log gives the latency percentiles.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

try:
    from load_tests.wrk import WrkResult
except ModuleNotFoundError:  # run from load_tests/: only that folder is on the path
    from wrk import WrkResult  # type: ignore[no-redef]

INSTALL_HINT = (
    "install nghttp2's h2load (Debian/Ubuntu: apt-get install nghttp2-client; macOS: brew install nghttp2)"
)
_RPC = "/inference.GRPCInferenceService/ModelInfer"


def find_h2load() -> str | None:
    return shutil.which("h2load")


def image_request(model: str, image: bytes) -> Any:
    """One ``ModelInfer`` request: the image as a ``BYTES [1]`` tensor, every output answered."""
    return pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])],
        raw_input_contents=[struct.pack("<I", len(image)) + image],
    )


def grpc_frame(request: Any) -> bytes:
    """A message as gRPC sends it: uncompressed flag, 4-byte big-endian length, the bytes."""
    message: bytes = request.SerializeToString()
    return b"\0" + struct.pack(">I", len(message)) + message


def run_grpc_load(address: str, model: str, image: Path, *, clients: int, seconds: int) -> WrkResult:
    """``clients`` HTTP/2 connections, one call in flight each, for ``seconds``; one h2load thread."""
    h2load = find_h2load()
    if h2load is None:
        raise RuntimeError(f"h2load is not on PATH: {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="grpc-load-") as tmp:
        body, log = Path(tmp) / "call.bin", Path(tmp) / "requests.tsv"
        body.write_bytes(grpc_frame(image_request(model, image.read_bytes())))
        command = [h2load, "-D", str(seconds), "-c", str(clients), "-m", "1", "-t", "1", "-d", str(body)]
        command += ["-H", "content-type: application/grpc", "-H", "te: trailers", f"--log-file={log}"]
        subprocess.run(
            [*command, f"http://{address}{_RPC}"], capture_output=True, check=True, timeout=seconds + 120
        )
        rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    statuses = [int(row[1]) for row in rows]
    durations_ms = np.array([int(row[2]) / 1000 for row in rows]) if rows else np.zeros(1)
    p50, p99 = np.percentile(durations_ms, [50, 99])
    return WrkResult(
        requests=len(rows),
        seconds=float(seconds),
        p50_ms=float(p50),
        p99_ms=float(p99),
        status_errors=sum(status != 200 for status in statuses),
        socket_errors=0,
    )
