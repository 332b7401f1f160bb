"""Benchmark model-serve against the in-process limit and a naive FastAPI server, in one run.

Repeats of one setting differ by 15-20% on a shared machine, so every target is a ratio or a
difference between figures taken in this same run, never a figure from another day. For each
model: the raw pipeline (decode, forward, postprocess in one thread, the server's own
functions), then the naive server and model-serve under wrk, interleaved per client count so
that both see the same background load. Beside model-serve's ``/predict``, its v2 doors (binary
REST under wrk, gRPC under h2load through ``load_tests/grpc_load.py``) for the digits model and resnet18.

    python load_tests/benchmark.py [--duration 10] [--clients 1,8,32] [--threads N]
                                   [--models digits,shapes,resnet18] [--v2-clients 1,32]
                                   [--out reports/] [--strict]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import torch
import torchvision
import yaml
from PIL import Image
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from models.demo import CHECKPOINT_DIR, DIGITS, SAMPLES_DIR, SHAPES, DemoModel
from service.config import ServeConfig, load_config
from service.images.decode import decode_image
from service.pipeline.devices import available_cores
from service.pipeline.tasks import Classification, Job, Segmentation, task_for

try:
    from load_tests.grpc_load import INSTALL_HINT as H2LOAD_HINT
    from load_tests.grpc_load import find_h2load, image_request, run_grpc_load
    from load_tests.naive_server import load_model
    from load_tests.report import NAIVE, SERVE, Load, RawResult, Target, compute_targets, write_report
    from load_tests.server_process import free_port
    from load_tests.wrk import INSTALL_HINT, WrkResult, find_wrk, run_wrk, write_script
except ModuleNotFoundError:  # run as `python load_tests/benchmark.py`: only load_tests/ is on the path
    from grpc_load import INSTALL_HINT as H2LOAD_HINT  # type: ignore[no-redef]
    from grpc_load import find_h2load, image_request, run_grpc_load  # type: ignore[no-redef]
    from naive_server import load_model  # type: ignore[no-redef]
    from report import (  # type: ignore[no-redef]
        NAIVE,
        SERVE,
        Load,
        RawResult,
        Target,
        compute_targets,
        write_report,
    )
    from server_process import free_port  # type: ignore[no-redef]
    from wrk import INSTALL_HINT, WrkResult, find_wrk, run_wrk, write_script  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
SERVERS = {NAIVE: ["load_tests.naive_server"], SERVE: ["service.cli", "serve"]}
READY_TIMEOUT_S = 180
# model-serve's v2 doors, measured beside its /predict for these models
V2_REST, V2_GRPC = "model-serve v2 REST binary", "model-serve v2 gRPC"
V2_MODELS = ("digits", "resnet18")
# Per-model options measured at 32 clients beside the defaults, for these models, each variant
# a model of its own in one more server (loaded and compiled before it is ready).
OPTION_MODELS = ("shapes", "resnet18")
OPTIONS: dict[str, dict[str, Any]] = {
    "fixed max_batch_size": {"batching": {"adaptive": False}},
    "channels_last": {"channels_last": True},
    "channels_last + fold_batchnorm": {"channels_last": True, "fold_batchnorm": True},
    "channels_last + compile": {"channels_last": True, "compile": "default"},
}
OPTIONS_READY_TIMEOUT_S = 1200  # torch.compile of every batch bucket on a 2-core CPU

Result = Classification | Segmentation


@dataclass(frozen=True)
class Bench:
    """A benchmarked model: the batch sizes measured raw (the largest is the server's batch)."""

    name: str
    batch_sizes: tuple[int, ...]
    content_type: str
    threads: int | None = None  # torch threads for this model everywhere; None: --threads


# The digits model is too small for a second torch thread to pay (as in the demo config).
BENCHES = {
    "digits": Bench("digits", (1, 8, 32), "image/png", threads=1),
    "shapes": Bench("shapes", (1, 2, 4), "image/jpeg"),
    "resnet18": Bench("resnet18", (1, 4, 8), "image/jpeg"),
}


def log(message: str) -> None:
    """Progress goes to stderr so that stdout holds only the report."""
    print(message, file=sys.stderr, flush=True)


# --- inputs and config ---------------------------------------------------------------------


def write_image(name: str, folder: Path) -> Path:
    """The request body for a model: a digit PNG, a 256x256 shapes JPEG, a ~17 KB 224x224 JPEG."""
    if name == "digits":
        return Path(shutil.copy(SAMPLES_DIR / "digit_7.png", folder / "digits.png"))
    if name == "shapes":
        image = Image.open(SAMPLES_DIR / "shapes_1.png").convert("RGB")
        image = image.resize((256, 256), Image.Resampling.BILINEAR)
    else:  # smooth colour fields plus grain: compresses like a photo (random noise would not)
        rng = np.random.default_rng(0)
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((224, 224), Image.Resampling.BICUBIC), dtype=np.float32)
        image = Image.fromarray((smooth + rng.normal(0, 8, smooth.shape)).clip(0, 255).astype(np.uint8))
    path = folder / f"{name}.jpg"
    image.save(path, format="JPEG", quality=90)
    return path


def demo_entry(demo: DemoModel, folder: Path) -> dict[str, Any]:
    """A demo model's config entry, its trained checkpoint copied under the checkpoint root."""
    source = CHECKPOINT_DIR / demo.checkpoint_file
    if not source.is_file():
        raise SystemExit(f"{source} is missing: python -m models.demo_training --out {CHECKPOINT_DIR}")
    shutil.copy(source, folder / demo.checkpoint_file)
    return {
        "task": demo.task,
        "architecture": demo.architecture,
        "init_args": dict(demo.init_args),
        "checkpoint": demo.checkpoint_file,
        "input": {
            "size": list(demo.size),
            "channels": demo.channels,
            "mean": list(demo.mean),
            "std": list(demo.std),
        },
        "labels": list(demo.labels),
    }


def resnet18_entry(folder: Path) -> dict[str, Any]:
    """torchvision's resnet18 with seeded random weights: its cost is what matters, not its answers."""
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), folder / "resnet18.pt")
    return {
        "task": "classification",
        "architecture": "torchvision.models:resnet18",
        "checkpoint": "resnet18.pt",
        "input": {
            "size": [224, 224],
            "channels": 3,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
    }


def write_config(folder: Path, names: Sequence[str]) -> Path:
    """One config for both servers: model-serve's CPU defaults (a replica per core sharing the
    cores; digits: one single-threaded replica, as in the demo), no batch delay, batches of the
    largest size measured raw. The naive server uses every core, or the model's torch_threads."""
    makers: dict[str, Callable[[Path], dict[str, Any]]] = {
        "digits": lambda f: demo_entry(DIGITS, f),
        "shapes": lambda f: demo_entry(SHAPES, f),
        "resnet18": resnet18_entry,
    }
    models = {}
    for name in names:
        batching = {"max_batch_size": max(BENCHES[name].batch_sizes), "max_delay_ms": 0}
        models[name] = {**makers[name](folder), "batching": batching, "devices": "cpu"}
        if BENCHES[name].threads is not None:
            models[name].update(torch_threads=BENCHES[name].threads, cpu_replicas=1)
    path = folder / "config.yaml"
    config = {"checkpoint_root": str(folder), "models": models}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --- the in-process limit ------------------------------------------------------------------


def raw_pipeline(config: ServeConfig, name: str) -> Callable[[bytes, int], list[Result]]:
    """Decode + preprocess + forward + postprocess of a batch, with the server's own functions."""
    loaded = load_model(config.models[name])
    spec, model = loaded.spec, loaded.model
    task = task_for(spec)

    def run(body: bytes, batch: int) -> list[Result]:
        jobs = [
            Job.of_image(decode_image(body, spec.input, max_pixels=config.server.max_image_pixels))
            for _ in range(batch)
        ]
        # the segmentation task encodes every mask to PNG too, as the server does for /predict
        results: list[Result] = task.postprocess(
            model(model.normalise(torch.stack([j.pixels for j in jobs]))), jobs
        )
        return results

    return run


def time_raw(
    name: str, run: Callable[[bytes, int], list[Result]], body: bytes, batch: int, seconds: float
) -> RawResult:
    """Warm up, then time whole batches for ``seconds`` (at least five)."""
    for _ in range(3):
        run(body, batch)
    times: list[float] = []
    while sum(times) < seconds or len(times) < 5:
        started = time.perf_counter()
        run(body, batch)
        times.append(time.perf_counter() - started)
    p50, p99 = np.percentile(times, [50, 99]) * 1000
    return RawResult(name, batch, batch * len(times) / sum(times), float(p50), float(p99))


def measure_raw(
    config: ServeConfig, bodies: dict[str, bytes], seconds: float, threads: int
) -> tuple[list[RawResult], dict[str, Result]]:
    """Every batch size of every model, and each model's answer for the reference check."""
    rows, expected = [], {}
    for name, body in bodies.items():
        torch.set_num_threads(config.models[name].torch_threads or threads)
        run = raw_pipeline(config, name)
        with torch.inference_mode():
            expected[name] = run(body, 1)[0]
            for batch in BENCHES[name].batch_sizes:
                rows.append(time_raw(name, run, body, batch, seconds))
                log(f"raw {name} batch {batch}: {rows[-1].images_per_s:,.1f} img/s")
    return rows, expected


# --- the servers under load ----------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """A running server: its HTTP URL, and its v2 gRPC address (model-serve only)."""

    url: str
    grpc_address: str | None
    pid: int


@contextlib.contextmanager
def serving(
    system: str, config_path: Path, folder: Path, ready_timeout_s: float = READY_TIMEOUT_S
) -> Iterator[Served]:
    """A server subprocess on free loopback ports, ready; stopped by its own PID afterwards."""
    port = free_port()
    grpc_port = free_port() if system == SERVE else None
    # the config alone decides: no MODEL_SERVE_* override from the caller's environment
    env = {key: value for key, value in os.environ.items() if not key.startswith("MODEL_SERVE_")}
    log_path = folder / f"{system}-{config_path.stem}.log"
    command = [
        sys.executable,
        "-m",
        *SERVERS[system],
        "--config",
        str(config_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *(["--grpc-port", str(grpc_port)] if grpc_port is not None else []),
    ]
    with log_path.open("wb") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, process, log_path, ready_timeout_s)
            yield Served(url, f"127.0.0.1:{grpc_port}" if grpc_port is not None else None, process.pid)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> None:
    """Polls /readyz: model-serve answers 200 only once every model is loaded and warmed up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args!r} exited {process.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} was not ready after {timeout_s:g} s:\n{log_path.read_text()[-3000:]}")


def settle(url: str) -> None:
    """Waits out the requests a run leaves queued, so that they do not load the next run.

    The naive server answers /readyz only once its event loop is free of the forwards queued
    before it; model-serve drops the queued work of clients that hung up.
    """
    httpx.get(f"{url}/readyz", timeout=120)
    time.sleep(0.5)


def check_answer(system: str, url: str, name: str, body: bytes, expected: Result) -> None:
    """One request: a 200 whose class or mask is exactly the in-process answer."""
    content_type = BENCHES[name].content_type
    response = httpx.post(
        f"{url}/predict",
        params={"model": name},
        content=body,
        headers={"Content-Type": content_type},
        timeout=60,
    )
    if response.status_code != 200:
        raise RuntimeError(f"{system} {name}: {response.status_code} {response.text[:300]}")
    prediction = response.json()["predictions"][0]
    if isinstance(expected, Classification):
        matches = prediction["class_index"] == expected.indices[0]
    else:
        png = base64.b64decode(prediction["mask_png_base64"])
        matches = np.array_equal(np.asarray(Image.open(io.BytesIO(png))), expected.mask)
    if not matches:
        raise RuntimeError(f"{system} {name}: the answer differs from the in-process one")
    log(f"{system} {name}: answer matches the in-process one")


def write_v2_body(name: str, image: Path, folder: Path) -> tuple[Path, int]:
    """The binary v2 REST request for one image (JSON header, then the length-prefixed file),
    every output answered in binary; and the header's length."""
    blob = image.read_bytes()
    section = len(blob).to_bytes(4, "little") + blob
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(section)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    path = folder / f"{name}.v2"
    path.write_bytes(header + section)
    return path, len(header)


def write_v2_script(folder: Path, header_length: int, name: str) -> Path:
    """wrk's script with the binary extension's header (the JSON part's length) added."""
    base = write_script(folder).read_text()
    marker = 'wrk.headers["Content-Type"] = content_type'
    if marker not in base:
        raise RuntimeError("load_tests/wrk.py's script no longer sets the Content-Type header as expected")
    extra = f'\n  wrk.headers["Inference-Header-Content-Length"] = "{header_length}"'
    path = folder / f"post_v2_{name}.lua"
    path.write_text(base.replace(marker, marker + extra))
    return path


def check_v2_answers(
    served: Served, name: str, image: Path, body: Path, header_length: int, expected: Result
) -> None:
    """One binary REST and one gRPC inference: a 200 whose class is the in-process answer."""
    if not isinstance(expected, Classification):
        raise RuntimeError(f"v2 rows are measured for classification models only, not {name}")
    response = httpx.post(
        f"{served.url}/v2/models/{name}/infer",
        content=body.read_bytes(),
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(header_length),
        },
        timeout=60,
    )
    if response.status_code != 200:
        raise RuntimeError(f"v2 REST {name}: {response.status_code} {response.text[:300]}")
    length = int(response.headers["Inference-Header-Content-Length"])
    described = orjson.loads(response.content[:length])["outputs"]
    offset, rest_class = length, -1
    for output in described:  # the sections follow in output order
        size = output["parameters"]["binary_data_size"]
        if output["name"] == "class_index":
            rest_class = int(np.frombuffer(response.content[offset : offset + size], "<i8")[0])
        offset += size
    if rest_class != expected.indices[0]:
        raise RuntimeError(f"v2 REST {name}: class {rest_class}, in-process {expected.indices[0]}")
    assert served.grpc_address is not None
    with grpc.insecure_channel(served.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelInfer(image_request(name, image.read_bytes()), timeout=60)
    names = [output.name for output in answer.outputs]
    grpc_class = int(np.frombuffer(answer.raw_output_contents[names.index("class_index")], "<i8")[0])
    if grpc_class != expected.indices[0]:
        raise RuntimeError(f"v2 gRPC {name}: class {grpc_class}, in-process {expected.indices[0]}")
    log(f"v2 REST and gRPC {name}: answers match the in-process one")


def v2_targets(load: Load) -> list[Target]:
    """The v2 issue's targets: binary REST keeps up with /predict on resnet18 (the forward
    dominates), gRPC at least matches it on digits (protocol overhead dominates)."""
    found = []
    for name, system, goal in (("resnet18", V2_REST, 0.95), ("digits", V2_GRPC, 1.0)):
        if (name, system, 32) in load and (name, SERVE, 32) in load:
            ratio = load[name, system, 32].rps / load[name, SERVE, 32].rps
            found.append(
                Target(f"{name} 32 clients: {system} / /predict", ratio, "x", f">= {goal}", ratio >= goal)
            )
    return found


def measure_servers(
    config_path: Path,
    folder: Path,
    images: dict[str, Path],
    expected: dict[str, Result],
    clients: Sequence[int],
    seconds: int,
    v2_clients: Sequence[int] = (),
) -> Load:
    """Both servers up at once and checked, then loaded in turn: each naive / model-serve pair
    of runs is adjacent in time, so background load on a shared machine hits both alike; so are
    model-serve's v2 runs (at ``v2_clients``, for ``V2_MODELS``), right after its /predict run."""
    script = write_script(folder)
    results: Load = {}
    v2 = {name: write_v2_body(name, path, folder) for name, path in images.items() if name in V2_MODELS}
    with contextlib.ExitStack() as stack:
        servers = {system: stack.enter_context(serving(system, config_path, folder)) for system in SERVERS}
        for system, served in servers.items():
            for name, path in images.items():
                check_answer(system, served.url, name, path.read_bytes(), expected[name])
        for name, (body, header_length) in v2.items():
            check_v2_answers(servers[SERVE], name, images[name], body, header_length, expected[name])
        for name, path in images.items():
            for count in clients:
                for system, served in servers.items():
                    result = run_wrk(
                        f"{served.url}/predict?model={name}",
                        script,
                        path,
                        BENCHES[name].content_type,
                        clients=count,
                        seconds=seconds,
                    )
                    record(results, (name, system, count), result, served.url)
                if name in v2 and count in v2_clients:
                    measure_v2(results, servers[SERVE], name, path, v2[name], folder, count, seconds)
    return results


def measure_v2(
    results: Load,
    served: Served,
    name: str,
    image: Path,
    body: tuple[Path, int],
    folder: Path,
    count: int,
    seconds: int,
) -> None:
    """model-serve's binary v2 REST (wrk) and gRPC (h2load) runs."""
    path, header_length = body
    rest = run_wrk(
        f"{served.url}/v2/models/{name}/infer",
        write_v2_script(folder, header_length, name),
        path,
        "application/octet-stream",
        clients=count,
        seconds=seconds,
    )
    record(results, (name, V2_REST, count), rest, served.url)
    assert served.grpc_address is not None
    remote = run_grpc_load(served.grpc_address, name, image, clients=count, seconds=seconds)
    record(results, (name, V2_GRPC, count), remote, served.url)


def write_options_config(config_path: Path, names: Sequence[str]) -> Path:
    """The benchmark's config with, for each model, one variant per entry of ``OPTIONS``."""
    base = yaml.safe_load(config_path.read_text())
    models = {}
    for name in names:
        for label, extra in OPTIONS.items():
            entry = copy.deepcopy(base["models"][name])
            entry.update({key: value for key, value in extra.items() if key != "batching"})
            entry["batching"] = {**entry["batching"], **extra.get("batching", {})}
            models[option_model(name, label)] = entry
    path = config_path.with_name("options.yaml")
    path.write_text(yaml.safe_dump({**base, "models": models}, sort_keys=False))
    return path


def option_model(name: str, label: str) -> str:
    return f"{name}-{label.replace(' ', '').replace('+', '-')}"


def measure_options(config_path: Path, folder: Path, images: dict[str, Path], seconds: int) -> Load:
    """Each option variant of ``OPTION_MODELS`` at 32 clients, as ``model-serve <label>`` rows."""
    names = [name for name in images if name in OPTION_MODELS]
    results: Load = {}
    if not names:
        return results
    script = write_script(folder)
    options_path = write_options_config(config_path, names)
    with serving(SERVE, options_path, folder, OPTIONS_READY_TIMEOUT_S) as served:
        for name in names:
            for label in OPTIONS:
                result = run_wrk(
                    f"{served.url}/predict?model={option_model(name, label)}",
                    script,
                    images[name],
                    BENCHES[name].content_type,
                    clients=32,
                    seconds=seconds,
                )
                record(results, (name, f"{SERVE} {label}", 32), result, served.url)
    return results


def option_targets(raw: list[RawResult], load: Load) -> list[Target]:
    """The performance issue's: at 32 clients, the defaults keep the ratio to raw measured before
    (resnet18 1.27, U-Net 1.12) and the best option beats it."""
    best = {name: max(r.images_per_s for r in raw if r.model == name) for name in {r.model for r in raw}}
    found = []
    for name, before in (("resnet18", 1.27), ("shapes", 1.12)):
        if (name, SERVE, 32) not in load:
            continue
        default = load[name, SERVE, 32].rps / best[name]
        found.append(
            Target(
                f"{name} 32 clients, defaults: model-serve / raw best",
                default,
                "x",
                f">= {before}",
                default >= before,
            )
        )
        variants = {
            label: load[name, f"{SERVE} {label}", 32].rps / best[name]
            for label in OPTIONS
            if (name, f"{SERVE} {label}", 32) in load
        }
        if variants:
            label, ratio = max(variants.items(), key=lambda item: item[1])
            found.append(
                Target(
                    f"{name} 32 clients, best option ({label}) / raw best",
                    ratio,
                    "x",
                    f"> {before}",
                    ratio > before,
                )
            )
    return found


def record(results: Load, key: tuple[str, str, int], result: WrkResult, url: str) -> None:
    """Keeps and logs one run, then lets the server settle before the next."""
    results[key] = result
    settle(url)
    name, system, count = key
    log(
        f"{system} {name} c={count}: {result.rps:,.1f} img/s p50 {result.p50_ms:.2f} ms "
        f"p99 {result.p99_ms:.2f} ms errors {result.errors}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (raw: a fifth)")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated wrk connection counts")
    parser.add_argument("--models", default=",".join(BENCHES), help=f"comma-separated, of {list(BENCHES)}")
    parser.add_argument(
        "--v2-clients",
        default="1,32",
        help=f"client counts (of --clients) of the v2 REST and gRPC runs, for {list(V2_MODELS)}",
    )
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument(
        "--threads",
        type=int,
        default=available_cores(),
        help="torch threads of the raw in-process runs (default: free cores; naive uses them all)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--no-options",
        action="store_true",
        help=f"skip the per-model option variants ({', '.join(OPTIONS)}) of {list(OPTION_MODELS)}",
    )
    args = parser.parse_args(argv)
    args.clients = [int(count) for count in args.clients.split(",")]
    args.v2_clients = [int(count) for count in args.v2_clients.split(",") if count]
    args.models = args.models.split(",")
    unknown = set(args.models) - set(BENCHES)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {list(BENCHES)}")
    return args


def missing_tools(grpc: bool = True) -> list[str]:
    """What the run needs and cannot find, each with how to get it (checked before measuring)."""
    missing = [] if find_wrk() is not None else [f"wrk is not on PATH: {INSTALL_HINT}"]
    if grpc and find_h2load() is None:
        missing.append(f"h2load is not on PATH (gRPC runs; --v2-clients '' skips them): {H2LOAD_HINT}")
    return missing


def main(argv: Sequence[str] | None = None) -> int:
    """Raw first (the servers are not up yet), then both servers; report, exit 1 only if --strict.

    Exit status 2, before anything is measured, when a tool is missing."""
    args = parse_args(argv)
    missing = missing_tools(grpc=bool(args.v2_clients))
    if missing:
        for problem in missing:
            print(f"benchmark: {problem}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="model-serve-bench-") as tmp:
        folder = Path(tmp)
        config_path = write_config(folder, args.models)
        config = load_config(config_path, environ={})
        images = {name: write_image(name, folder) for name in args.models}
        bodies = {name: path.read_bytes() for name, path in images.items()}
        settings = {
            "duration_s": args.duration,
            "torch_threads": args.threads,
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "inputs": ", ".join(
                f"{name} {path.suffix[1:]} {len(bodies[name]):,} B" for name, path in images.items()
            ),
        }
        raw, expected = measure_raw(config, bodies, args.duration / 5, args.threads)
        load = measure_servers(
            config_path, folder, images, expected, args.clients, args.duration, args.v2_clients
        )
        if not args.no_options:
            load |= measure_options(config_path, folder, images, args.duration)
    targets = compute_targets(raw, load) + v2_targets(load) + option_targets(raw, load)
    print(write_report(args.out, settings, raw, load, targets))
    return 1 if args.strict and not all(target.passed for target in targets) else 0


if __name__ == "__main__":
    sys.exit(main())
