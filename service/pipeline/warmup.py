"""Warm-up: a new version runs every batch shape it will serve, on every replica, before it serves.

The largest batch runs first, so a batch that does not fit fails the load instead of a request.
Then, when the model is compiled or its batch cap is adaptive, every bucket size runs: a
compiled model compiles (and records its CUDA graphs) for each bucket here, never on a request,
and an adaptive one times each bucket on all its replicas at once into its ``BatchCost``. An
option the device cannot do fails here with an error that names the model and the option,
never a silent fallback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from service.config import ModelSpec
from service.errors import CheckpointError, ConfigError, NonFiniteOutput, ServeError
from service.pipeline.batch_cap import bucket_sizes
from service.pipeline.replica import MeasuredBatch, ModelVersion, Replica
from service.pipeline.served import ServedModel
from service.pipeline.tasks import Job, Wants

# Runs per bucket of a compiled model: the compile, then (CUDA graph trees, reduce-overhead)
# one warm run and one that records the graph.
_COMPILED_RUNS = 3


async def warm_up(served: ServedModel, version: ModelVersion) -> list[Any]:
    """Runs the version's batch shapes on every replica; the results of its largest batch."""
    spec = served.spec
    jobs = _warm_up_jobs(spec)
    sizes = bucket_sizes(len(jobs))[::-1]
    results: list[Any] = []
    for replica in served.replicas:
        with _blaming(served, version, replica):
            results = (await _run(replica, version, served, jobs)).outputs
            for size in sizes if spec.compile else ():
                for _ in range(_COMPILED_RUNS):
                    await _run(replica, version, served, jobs[:size])
    if served.cost is None:
        return results
    for size in sizes:
        # every replica at once, as a loaded server runs them (see ``_timed``)
        measured = await asyncio.gather(
            *(_timed(replica, version, served, jobs[:size]) for replica in served.replicas)
        )
        for batch in measured:
            served.cost.add(size, batch.core_seconds, refit=False)
    served.cost.refit()
    return results


async def _timed(
    replica: Replica, version: ModelVersion, served: ServedModel, jobs: list[Job]
) -> MeasuredBatch:
    """One batch timed as a loaded server runs it: on one core of a shared CPU (see
    ``CoreShare``), beside the model's other replicas, after one untimed run of its size there.
    Timed alone, each size looked a third cheaper than under load, where two replicas share
    the caches; and a size's first run on a thread cost the demo U-Net 2.5x the next. Either
    gave its sizes timings that traffic at the cap never corrects (see ``BatchCost``)."""
    with _blaming(served, version, replica):
        await _run(replica, version, served, jobs, work_waiting=True)
        return await _run(replica, version, served, jobs, work_waiting=True)


@contextmanager
def _blaming(served: ServedModel, version: ModelVersion, replica: Replica) -> Iterator[None]:
    """A warm-up failure as the load's error: non-finite outputs fail the checkpoint, an error
    from an option names the model and the option (``_blame``)."""
    try:
        yield
    except NonFiniteOutput:
        raise CheckpointError(
            f"{version.checkpoint.name}: the warm-up forward on {replica.device_key} gave "
            f"non-finite outputs (NaN or inf){_in_precision(served.spec)}; the weights are not served"
        ) from None
    except ServeError:
        raise
    except Exception as exc:
        blamed = _blame(served.name, served.spec, replica.device_key, exc)
        if blamed is None:
            raise
        raise blamed from exc


async def _run(
    replica: Replica, version: ModelVersion, served: ServedModel, jobs: list[Job], work_waiting: bool = False
) -> MeasuredBatch:
    return await asyncio.wrap_future(replica.submit(version, jobs, served.task, work_waiting))


def _warm_up_jobs(spec: ModelSpec) -> list[Job]:
    """A full batch of deterministic noise images, so the largest batch is known to fit."""
    height, width = spec.input.size
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.integers(0, 256, (height, width, spec.input.channels), dtype=np.uint8))
    wants = Wants(top_k=1, probabilities=True, mask_png=False)
    return [Job(pixels, (height, width), wants)] * spec.batching.max_batch_size


def _blame(name: str, spec: ModelSpec, device: str, exc: Exception) -> ConfigError | None:
    """The option a warm-up failure comes from, as a startup/reload error; ``None`` with none
    set (the model's own failure, reported as before). Compiler errors blame ``compile``; any
    other error the reduced precision, else ``channels_last``, else ``compile``."""
    reason = f"{type(exc).__name__}: {str(exc).strip()[:400]}"
    if spec.compile and _from_compiler(exc):
        return ConfigError(f"model {name!r}: compile {spec.compile} failed on {device}: {reason}")
    if spec.precision != "float32":
        return ConfigError(
            f"model {name!r}: precision {spec.precision} is not supported on {device}: {reason}"
        )
    if spec.channels_last:
        return ConfigError(f"model {name!r}: channels_last is not supported on {device}: {reason}")
    if spec.compile:
        return ConfigError(f"model {name!r}: compile {spec.compile} failed on {device}: {reason}")
    return None


def _from_compiler(exc: BaseException) -> bool:
    """Raised by dynamo or inductor (checked by module name: no compiler import to check)."""
    chain: BaseException | None = exc
    while chain is not None:
        if any(
            cls.__module__.startswith(("torch._dynamo", "torch._inductor")) for cls in type(chain).__mro__
        ):
            return True
        chain = chain.__cause__
    return False


def _in_precision(spec: ModelSpec) -> str:
    return "" if spec.precision == "float32" else f" in {spec.precision}"
