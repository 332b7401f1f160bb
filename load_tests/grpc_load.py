"""A bounded load generator for the v2 gRPC ``ModelInfer`` RPC: N concurrent loops for D seconds.

It runs as its own process (``run_grpc_load`` starts it), so the client's CPU time is never
counted inside the benchmark's own process, and prints one JSON line with exact figures. Every
loop sends the same prepared request (one image, ``BYTES`` as ``raw_input_contents``) over one
HTTP/2 channel, as a tritonclient application would; the first answer is checked before timing.

    python -m load_tests.grpc_load --address 127.0.0.1:8081 --model digits --image digit.png \\
        --clients 32 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

try:
    from load_tests.wrk import WrkResult
except ModuleNotFoundError:  # run from load_tests/: only that folder is on the path
    from wrk import WrkResult  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
_MARK = "GRPC_LOAD_RESULT "
_TIMEOUT_S = 60  # as wrk's: a slow server shows as latency, not as timeouts left out of it


def image_request(model: str, image: bytes) -> Any:
    """One ``ModelInfer`` request: the image as a ``BYTES [1]`` tensor, every output answered."""
    return pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])],
        raw_input_contents=[struct.pack("<I", len(image)) + image],
    )


async def load(address: str, request: Any, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` loops sending ``request`` until ``seconds`` pass; failed calls are counted."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        first = await stub.ModelInfer(request, timeout=_TIMEOUT_S)  # connects and warms up
        if not first.outputs:
            raise RuntimeError(f"the first answer has no outputs: {first}")
        latencies: list[float] = []
        errors: dict[str, int] = {}
        deadline = time.perf_counter() + seconds

        async def loop() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    await stub.ModelInfer(request, timeout=_TIMEOUT_S)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                    continue
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000 if latencies else (0.0, 0.0)
    return {
        "requests": len(latencies) + sum(errors.values()),
        "answered": len(latencies),
        "seconds": elapsed,
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "errors": errors,
    }


def run_grpc_load(address: str, model: str, image: Path, *, clients: int, seconds: int) -> WrkResult:
    """This module in a child process; its figures in wrk's form (failed calls as status errors)."""
    command = [sys.executable, "-m", "load_tests.grpc_load", "--address", address, "--model", model]
    command += ["--image", str(image), "--clients", str(clients), "--duration", str(seconds)]
    finished = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, check=True, timeout=seconds + 2 * _TIMEOUT_S
    )
    line = next((ln for ln in finished.stdout.splitlines() if ln.startswith(_MARK)), None)
    if line is None:
        raise RuntimeError(f"grpc_load printed no result:\n{finished.stdout}\n{finished.stderr}")
    raw = json.loads(line.removeprefix(_MARK))
    return WrkResult(
        requests=raw["requests"],
        seconds=raw["seconds"],
        p50_ms=raw["p50_ms"],
        p99_ms=raw["p99_ms"],
        status_errors=sum(raw["errors"].values()),
        socket_errors=0,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="HOST:PORT of the v2 gRPC server")
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", type=Path, required=True, help="the image file every call sends")
    parser.add_argument("--clients", type=int, default=32, help="concurrent calls in flight")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    args = parser.parse_args(argv)
    request = image_request(args.model, args.image.read_bytes())
    result = asyncio.run(load(args.address, request, args.clients, args.duration))
    print(_MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
