"""GPU check: the GPU tests, then a short GPU benchmark, in under 8 minutes (``make gpu-check``).

Without CUDA it says so and exits 0: nothing here can be checked on a CPU. With CUDA it runs
``pytest -m gpu``, then measures resnet18 and the demo U-Net (seeded random weights: their cost
is what matters) raw in-process and served by one model-serve process that holds every variant
at once (one start, one warm-up): float32 eager, bfloat16 + channels_last + compile, float16 +
channels_last + fold_batchnorm, and float32 on two replicas of one GPU (``devices: [cuda:0,
cuda:0]``), each at 1 and 32 clients, plus device memory. Figures go to ``OUT/gpu-check.json``
and ``OUT/gpu-check.md``.

    python load_tests/gpu_check.py [--out reports/gpu-check] [--seconds 6] [--skip-tests]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python load_tests/gpu_check.py`
    sys.path.insert(0, str(ROOT))

from load_tests.benchmark import write_image  # noqa: E402
from load_tests.server_process import ServerProcess  # noqa: E402
from models.demo import SHAPES  # noqa: E402
from service.checkpoints.architecture import build_model  # noqa: E402
from service.config import load_config  # noqa: E402
from service.pipeline.replica import DeviceModel  # noqa: E402

READY_TIMEOUT_S = 300  # every variant warms (and compiles) before readiness
CLIENTS = (1, 32)
MAX_BATCH = 32
# name -> the options every variant of a model is served with; (replicas, raw?) beside them
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "bf16_cl_compiled": {"precision": "bfloat16", "channels_last": True, "compile": "default"},
    "fp16_cl_folded": {"precision": "float16", "channels_last": True, "fold_batchnorm": True},
    "fp32_2replicas": {"devices": ["cuda:0", "cuda:0"]},
}
MODELS: dict[str, dict[str, Any]] = {
    "resnet18": {
        "task": "classification",
        "architecture": "torchvision.models:resnet18",
        "init_args": {},
        "input": {"size": [224, 224], "channels": 3},
        "image": "resnet18",
    },
    "unet": {
        "task": "segmentation",
        "architecture": SHAPES.architecture,
        "init_args": dict(SHAPES.init_args),
        "input": {"size": [256, 256], "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3},
        "image": "shapes",
    },
}


@dataclass(frozen=True)
class Row:
    """One measured figure: raw (in-process batches) or served (clients over HTTP)."""

    model: str
    variant: str
    mode: str  # "raw" or "served"
    concurrency: int  # raw: the batch size; served: the clients
    images_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int = 0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_config(folder: Path) -> Path:
    """One config holding every model x variant, as ``<model>_<variant>``, on cuda:0."""
    models = {}
    for model, base in MODELS.items():
        torch.manual_seed(0)
        checkpoint = folder / f"{model}.pt"
        torch.save(build_model(base["architecture"], base["init_args"]).state_dict(), checkpoint)
        entry = {key: value for key, value in base.items() if key != "image"}
        entry |= {"checkpoint": checkpoint.name, "devices": ["cuda:0"]}
        entry["batching"] = {"max_batch_size": MAX_BATCH, "max_delay_ms": 2}
        for variant, options in VARIANTS.items():
            models[f"{model}_{variant}"] = {**entry, **options}
    path = folder / "config.yaml"
    server = {"grpc_port": None, "request_timeout_s": 60}
    path.write_text(yaml.safe_dump({"checkpoint_root": ".", "server": server, "models": models}))
    return path


def summarise(
    latencies_s: Sequence[float], seconds: float, images_per_request: int = 1
) -> tuple[float, float, float]:
    """(images/s, p50 ms, p99 ms) of the requests answered in ``seconds``."""
    if not latencies_s:
        return 0.0, 0.0, 0.0
    p50, p99 = np.percentile(np.asarray(latencies_s) * 1000, [50, 99])
    return len(latencies_s) * images_per_request / seconds, float(p50), float(p99)


def measure_raw(config_path: Path, seconds: float) -> list[Row]:
    """The server's own DeviceModel on cuda:0 (forward only), batch 1 and 32, per variant that
    runs on one replica: the ceiling the served figures are read against."""
    config = load_config(config_path, environ={})
    rows = []
    device = torch.device("cuda", 0)
    for name, spec in config.models.items():
        if len(spec.devices) != 1:
            continue
        model, variant = name.split("_", 1)
        module = build_model(spec.architecture, spec.init_args).eval().to(device)
        runner = DeviceModel(module, spec, device)
        height, width = spec.input.size
        for batch in (1, MAX_BATCH):
            pixels = torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8, device=device)
            times = _time_forward(runner, pixels, seconds)
            rows.append(Row(model, variant, "raw", batch, *summarise(times, sum(times), batch)))
            log(f"raw {name} batch {batch}: {rows[-1].images_per_s:,.0f} img/s")
        del runner, module
        torch.cuda.empty_cache()
    return rows


def _time_forward(runner: DeviceModel, pixels: torch.Tensor, seconds: float) -> list[float]:
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(3):  # warm-up (a compiled variant compiles here)
            runner(runner.normalise(pixels))
        torch.cuda.synchronize()
        while sum(times) < seconds or len(times) < 5:
            started = time.perf_counter()
            runner(runner.normalise(pixels))
            torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
    return times


async def load(url: str, body: bytes, clients: int, seconds: float) -> tuple[list[float], int]:
    """``clients`` connections posting ``body`` back to back for ``seconds``: latencies, errors."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one_client() -> None:
            nonlocal errors
            while time.monotonic() < deadline:
                started = time.monotonic()
                answer = await client.post(url, content=body, headers={"Content-Type": "image/jpeg"})
                if answer.status_code == 200:
                    latencies.append(time.monotonic() - started)
                else:
                    errors += 1

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies, errors


def measure_served(config_path: Path, folder: Path, seconds: float) -> tuple[list[Row], dict[str, Any]]:
    """Every variant at 1 and 32 clients on one server; the server's caps and device memory."""
    images = {name: write_image(base["image"], folder).read_bytes() for name, base in MODELS.items()}
    server = ServerProcess(config_path, folder / "server.log")
    rows, extra = [], {}
    try:
        started = time.monotonic()
        server.wait_ready(READY_TIMEOUT_S)
        extra["warm_up_s"] = round(time.monotonic() - started, 1)
        for name in load_config(config_path, environ={}).models:
            model, variant = name.split("_", 1)
            for clients in CLIENTS:
                url = f"{server.url}/predict?model={name}"
                latencies, errors = asyncio.run(load(url, images[model], clients, seconds))
                rows.append(Row(model, variant, "served", clients, *summarise(latencies, seconds), errors))
                log(f"served {name} c={clients}: {rows[-1].images_per_s:,.0f} img/s errors {errors}")
        info = httpx.get(f"{server.url}/models", timeout=10).json()["models"]
        extra["batch_caps"] = {m["name"]: m["batching"]["cap"] for m in info}
        extra["device_memory_bytes"] = device_memory(httpx.get(f"{server.url}/metrics", timeout=10).text)
    finally:
        server.stop()
    return rows, extra


def device_memory(metrics: str) -> dict[str, float]:
    """``model_serve_device_memory*_bytes`` series of a /metrics text, by series."""
    return {
        series: float(value)
        for series, _, value in (line.rpartition(" ") for line in metrics.splitlines())
        if series.startswith("model_serve_device_memory")
    }


def markdown(rows: Sequence[Row], extra: dict[str, Any]) -> str:
    """The report: one table row per figure, then the settings and memory."""
    lines = [
        "# GPU check",
        "",
        "| model | variant | mode | batch / clients | images/s | p50 ms | p99 ms | errors |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.variant} | {r.mode} | {r.concurrency} | {r.images_per_s:,.1f} | "
            f"{r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |"
        )
    lines += ["", "```json", json.dumps(extra, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


def run_gpu_tests() -> dict[str, Any]:
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/integration/test_gpu.py"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    log(done.stdout[-2000:])
    return {"command": " ".join(command[1:]), "returncode": done.returncode, "tail": done.stdout[-2000:]}


def main(argv: Sequence[str] | None = None) -> int:
    """0 when there is no CUDA (said so) or everything ran clean; 1 when a GPU test failed or
    a request errored."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/gpu-check"))
    parser.add_argument("--seconds", type=float, default=6.0, help="per served run (raw: a third)")
    parser.add_argument("--skip-tests", action="store_true", help="benchmark only")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False): nothing to check")
        return 0
    started = time.monotonic()
    extra: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    if not args.skip_tests:
        extra["tests"] = run_gpu_tests()
    with tempfile.TemporaryDirectory(prefix="model-serve-gpu-check-") as tmp:
        folder = Path(tmp)
        config_path = write_config(folder)
        rows = measure_raw(config_path, args.seconds / 3)
        extra["raw_peak_memory_bytes"] = torch.cuda.max_memory_allocated(0)
        served, found = measure_served(config_path, folder, args.seconds)
    extra |= found | {"seconds": args.seconds, "total_s": round(time.monotonic() - started, 1)}
    rows += served
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-check.json").write_text(
        json.dumps({"rows": [asdict(r) for r in rows], **extra}, indent=2)
    )
    (args.out / "gpu-check.md").write_text(markdown(rows, extra))
    print(f"gpu-check: figures in {args.out}/gpu-check.md and gpu-check.json")
    failed = extra.get("tests", {}).get("returncode", 0) != 0 or any(r.errors for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
