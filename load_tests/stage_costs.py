"""CPU seconds per image by stage, in process and served: what sizes front ends for a GPU.

A GPU takes the forward off the CPU; everything else a request costs stays there: HTTP and
the framework, decoding, preprocessing, batching, postprocessing and rendering. This measures
each stage's CPU time on one thread (``time.thread_time``, so other load on the machine
changes it less than wall time), then the whole server's CPU per request under wrk at 32
clients (the server process's user + system time over the run, every thread), and attributes
the difference to what only the server does (HTTP, routing, batching, rendering).

    python load_tests/stage_costs.py [--models digits,shapes,resnet18] [--seconds 5]

It prints one table; ``docs/scaling.md`` (front ends for a GPU) turns it into cores per GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from load_tests.benchmark import BENCHES, SERVE, serving, write_config, write_image
from load_tests.naive_server import load_model
from load_tests.wrk import find_wrk, run_wrk, write_script
from service.config import load_config
from service.images.decode import decode_image
from service.pipeline.tasks import Job, task_for

CLIENTS = 32
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class StageCosts:
    """CPU milliseconds per image of each stage, and of the whole served request."""

    model: str
    batch: int
    decode_ms: float
    preprocess_ms: float
    forward_ms: float
    postprocess_ms: float
    render_ms: float
    served_ms: float | None  # the server's CPU per request at CLIENTS clients, every thread

    @property
    def in_process_ms(self) -> float:
        return self.decode_ms + self.preprocess_ms + self.forward_ms + self.postprocess_ms + self.render_ms

    @property
    def server_only_ms(self) -> float | None:
        """What the server spends beyond the pipeline: HTTP, routing, batching, metrics."""
        return None if self.served_ms is None else self.served_ms - self.in_process_ms

    @property
    def off_gpu_ms(self) -> float | None:
        """The CPU a request costs once its forward runs on a GPU."""
        return None if self.served_ms is None else self.served_ms - self.forward_ms


def cpu_ms(run: Callable[[], object], seconds: float, per: int) -> float:
    """Thread CPU milliseconds of one ``run``, divided by ``per``, after warming up."""
    for _ in range(2):
        run()
    count, started = 0, time.thread_time()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or count < 3:
        run()
        count += 1
    return (time.thread_time() - started) * 1000 / count / per


def measure_in_process(config_path: Path, name: str, body: bytes, seconds: float) -> StageCosts:
    """Each stage with the server's own functions, one torch thread, at the served batch size."""
    config = load_config(config_path)
    spec = config.models[name]
    loaded = load_model(spec)
    task = task_for(spec)
    batch = max(BENCHES[name].batch_sizes)
    max_pixels = config.server.max_image_pixels
    decoded = [decode_image(body, spec.input, max_pixels=max_pixels) for _ in range(batch)]
    jobs = [Job.of_image(image) for image in decoded]
    stacked = torch.stack([job.pixels for job in jobs])
    x = loaded.model.normalise(stacked)
    with torch.inference_mode():
        logits = loaded.model(x)
        results = task.postprocess(logits, jobs)

        def forward() -> object:
            return loaded.model(x)

        def postprocess() -> object:
            return task.postprocess(logits, jobs)

        return StageCosts(
            model=name,
            batch=batch,
            decode_ms=cpu_ms(lambda: decode_image(body, spec.input, max_pixels=max_pixels), seconds, 1),
            preprocess_ms=cpu_ms(
                lambda: loaded.model.normalise(torch.stack([j.pixels for j in jobs])), seconds, batch
            ),
            forward_ms=cpu_ms(forward, seconds, batch),
            postprocess_ms=cpu_ms(postprocess, seconds, batch),
            render_ms=cpu_ms(lambda: _render(task.predict_body(results, spec.labels)), seconds, batch),
            served_ms=None,
        )


def _render(body: object) -> bytes:
    return orjson.dumps({"predictions": body}, option=orjson.OPT_SERIALIZE_NUMPY)


def measure_served(config_path: Path, folder: Path, name: str, image: Path, seconds: int) -> float:
    """The server's CPU milliseconds per request at ``CLIENTS`` clients."""
    script = write_script(folder)
    with serving(SERVE, config_path, folder) as served:
        pid = served.pid
        url = f"{served.url}/predict?model={name}"
        run_wrk(url, script, image, BENCHES[name].content_type, clients=CLIENTS, seconds=2)  # warm
        before = _cpu_seconds(pid)
        result = run_wrk(url, script, image, BENCHES[name].content_type, clients=CLIENTS, seconds=seconds)
        spent = _cpu_seconds(pid) - before
    if result.requests == 0:
        raise RuntimeError(f"{name}: wrk completed no request")
    return spent * 1000 / result.requests


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of every thread of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def print_table(rows: Sequence[StageCosts]) -> None:
    head = (
        "model",
        "batch",
        "decode",
        "preprocess",
        "forward",
        "postprocess",
        "render",
        "pipeline",
        "served",
        "server-only",
        "off-GPU",
    )
    print("CPU ms per image (one thread; served: the server's every thread at 32 clients)")
    print(" | ".join(head))
    for row in rows:
        figures = (
            row.decode_ms,
            row.preprocess_ms,
            row.forward_ms,
            row.postprocess_ms,
            row.render_ms,
            row.in_process_ms,
            row.served_ms,
            row.server_only_ms,
            row.off_gpu_ms,
        )
        print(" | ".join([row.model, str(row.batch), *("-" if f is None else f"{f:.3f}" for f in figures)]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="digits,shapes,resnet18")
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args(argv)
    names = args.models.split(",")
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        config_path = write_config(folder, names)
        for name in names:
            image = write_image(name, folder)
            costs = measure_in_process(config_path, name, image.read_bytes(), args.seconds)
            if find_wrk() is not None:  # one server per model: its CPU is that model's alone
                alone = folder / name
                alone.mkdir()
                served = measure_served(write_config(alone, [name]), alone, name, image, args.seconds)
                costs = replace(costs, served_ms=served)
            rows.append(costs)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
