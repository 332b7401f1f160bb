"""A replica: one model's weights on one device, run by one thread that nothing else uses.

The replica pulls batches of decoded jobs from its model's batcher while idle, stages the uint8
pixels (pinned host memory and a ``non_blocking`` copy on its own CUDA stream, on a GPU),
normalises on the device, runs the forward under ``torch.inference_mode()``, runs the task's
postprocess on the device, and settles the batch's requests. Whatever a batch raises (any
``BaseException`` but the replica's own cancellation) fails only that batch's requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from service.config import ModelSpec
from service.errors import InferenceFailed, NonFiniteOutput, NotReady, ServeError
from service.ops.metrics import ModelMetrics
from service.pipeline.batch_cap import BatchCost, bucket_for, bucket_sizes
from service.pipeline.batching import Batch, DynamicBatcher
from service.pipeline.devices import CoreShare, holding, wide_lane
from service.pipeline.fold import fold_batchnorm
from service.pipeline.statistics import Phases, PhaseTimer, VersionStatistics
from service.pipeline.tasks import Job, Task, select_logits

log = logging.getLogger(__name__)


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class DeviceModel:
    """A loaded module on its device, with the normalisation, options and output choice it needs.

    The options are applied once, here: ``fold_batchnorm`` folds BatchNorms into their
    convolutions (in float32, before any cast), ``precision`` casts the weights (inputs are cast on the
    device, after normalising in float32), ``channels_last`` sets the memory format of module
    and inputs, ``compile`` wraps the module in ``torch.compile``. A compiled model only ever
    sees bucket sizes (``bucket_sizes``) in one memory format, so warming each bucket before the
    model is ready leaves nothing to compile while serving: a smaller batch is padded with
    copies of its first row, whose outputs are dropped before postprocess.
    """

    def __init__(self, module: torch.nn.Module, spec: ModelSpec, device: torch.device) -> None:
        if spec.fold_batchnorm:
            module = fold_batchnorm(module)
        if spec.precision != "float32":
            module = module.to(DTYPES[spec.precision])
        if spec.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        self.device = device
        self.output_key = spec.output
        self.dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
        self.dtype = self.dtype or torch.float32
        self.buckets = bucket_sizes(spec.batching.max_batch_size) if spec.compile else None
        self._forward: Callable[[torch.Tensor], Any] = (
            torch.compile(module, mode=spec.compile) if spec.compile else module
        )
        # compiled: one fixed layout, or a differently strided input would compile again
        self._memory_format = (
            torch.channels_last if spec.channels_last else torch.contiguous_format if spec.compile else None
        )
        channels = spec.input.channels
        mean = torch.tensor(spec.input.mean, dtype=torch.float32).expand(channels)
        std = torch.tensor(spec.input.std, dtype=torch.float32).expand(channels)
        # (x / 255 - mean) / std as one multiply-add on the device; float32 for a float16 or
        # bfloat16 model, whose 8- or 11-bit mantissa would round the pixels before the cast
        self._normal_dtype = torch.float32 if self.dtype in (torch.float16, torch.bfloat16) else self.dtype
        self._scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1).to(device, self._normal_dtype)
        self._shift = (-mean / std).view(1, -1, 1, 1).to(device, self._normal_dtype)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, C] on this device -> the model's float input [N, C, H, W]."""
        return pixels.permute(0, 3, 1, 2).to(self._normal_dtype).mul_(self._scale).add_(self._shift)

    def padded_size(self, count: int) -> int:
        """The batch size the forward really runs for ``count`` inputs."""
        return count if self.buckets is None else bucket_for(count, self.buckets)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's input [N, C, H, W] on this device -> the logits tensor [N, ...]."""
        inputs = inputs.to(self.dtype)
        count = inputs.shape[0]
        padded = self.padded_size(count)
        if padded > count:
            inputs = torch.cat([inputs, inputs[:1].expand(padded - count, *inputs.shape[1:])])
        if self._memory_format is not None:
            inputs = _in_layout(inputs, self._memory_format)
        logits = select_logits(self._forward(inputs), self.output_key)
        return logits[:count] if padded > count else logits


def _in_layout(inputs: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``inputs`` with exactly the strides ``memory_format`` gives its shape. Not merely
    ``contiguous``: that accepts any stride on a size-1 dim (one channel), and a compiled
    graph guards on the strides themselves, so two doors' layouts would compile twice."""
    canonical = torch.empty(inputs.shape, device="meta", memory_format=memory_format).stride()
    return inputs if inputs.stride() == canonical else inputs.clone(memory_format=memory_format)


@dataclass(frozen=True, eq=False)
class ModelVersion:
    """One loaded checkpoint: a copy of the weights on every device of the model. It is the
    batcher's tag, so a batch never mixes versions and each answer names the one it came from."""

    version: str
    checkpoint: Path
    loaded_at: float
    load_seconds: float
    device_models: tuple[DeviceModel, ...]  # one per replica, in replica order
    classes: int = 0  # the logits' class count, seen at warm-up
    statistics: VersionStatistics = field(default_factory=VersionStatistics)  # what it has served


def _use_threads(threads: int) -> None:
    if torch.get_num_threads() != threads:  # a change resizes the thread pool: only when needed
        torch.set_num_threads(threads)


@dataclass(frozen=True, slots=True)
class MeasuredBatch:
    """A batch's outputs (one per job), the CPU threads it ran on (1 on a GPU), its cost in
    core-seconds (see ``Replica.run_measured`` and ``BatchCost``) and its phases' wall times."""

    outputs: list[Any]
    threads: int
    core_seconds: float
    phases: Phases


class ForwardRaised(Exception):
    """A forward raised a ``BaseException`` that is not an ``Exception``."""


class Replica:
    """Serves one model on one device; its executor has exactly one thread."""

    def __init__(
        self,
        slot: int,
        model_name: str,
        device: torch.device,
        *,
        input_shape: tuple[int, int, int],  # H, W, C
        max_batch_size: int,
        threads: int | CoreShare = 1,
    ) -> None:
        self.slot = slot  # this replica's index into a version's device_models
        self.model_name = model_name
        self.device = device
        self.device_key = str(device)
        self.busy = False
        self.batches_served = 0
        # CPU threads: a fixed count, or a share of the cores claimed per batch
        self._threads = threads if device.type == "cpu" else None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"replica-{model_name}-{slot}-{device}")
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None  # type: ignore[no-untyped-call]
        self._pinned = (
            torch.empty((max_batch_size, *input_shape), dtype=torch.uint8).pin_memory()
            if device.type == "cuda"
            else None
        )

    async def serve(
        self,
        batcher: DynamicBatcher[Job, ModelVersion],
        task: Task,
        metrics: ModelMetrics,
        cost: BatchCost | None = None,
    ) -> None:
        """Pull and run batches until cancelled; every batch taken is settled or failed, and
        each one served is a sample of ``cost``: its size as run (padding included) and its
        core-seconds (see ``BatchCost``)."""
        while True:
            # the batch is a local of the call, not of this loop: once answered, nothing here
            # holds its version (an unloaded model's weights are freed)
            await self._serve_batch(await batcher.next_batch(), batcher, task, metrics, cost)

    async def _serve_batch(
        self,
        batch: Batch[Job, ModelVersion],
        batcher: DynamicBatcher[Job, ModelVersion],
        task: Task,
        metrics: ModelMetrics,
        cost: BatchCost | None,
    ) -> None:
        self.busy = True
        started = time.monotonic()
        try:
            measured = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.run_measured, batch.tag, batch.payloads, task, batcher.depth > 0
            )
        except asyncio.CancelledError:
            batch.fail(NotReady("the server is shutting down; retry on another instance"))
            raise
        except Exception as exc:
            metrics.failed_batch(exc.code if isinstance(exc, ServeError) else "exception")
            self._fail(batch, exc)
            return
        finally:
            self.busy = False
        compute_s = time.monotonic() - started
        batch.settle(measured.outputs)
        self.batches_served += 1
        size = len(measured.outputs)
        metrics.observe_batch(self.device_key, size, started - batch.oldest_enqueued_at, compute_s)
        phases = measured.phases.within(compute_s)
        batch.tag.statistics.executed(size, started, batch.first_arrivals, phases)
        if cost is not None:
            cost.add(batch.tag.device_models[self.slot].padded_size(size), measured.core_seconds)

    def run(
        self, version: ModelVersion, jobs: Sequence[Job], task: Task, work_waiting: bool = False
    ) -> list[Any]:
        """Blocking: stage, forward and postprocess one batch on this thread (``work_waiting``:
        more images wait in the queue, see ``CoreShare``); one output per job."""
        return self.run_measured(version, jobs, task, work_waiting).outputs

    def run_measured(
        self, version: ModelVersion, jobs: Sequence[Job], task: Task, work_waiting: bool = False
    ) -> MeasuredBatch:
        """``run``, with what the batch cost.

        The cost of a batch on one CPU thread is that thread's CPU time: its wall time under
        load also counts the moments the thread waited for a core (other replicas, decoding,
        the event loop), so sizes that only ever ran under load looked up to half again dearer
        than sizes timed at one client, and the demo U-Net's cap sank from 4 to 2 in a server
        of three models (262 against 345 requests a second at 32 clients). A batch on several
        threads costs its wall time times its threads (their CPU time is not this thread's to
        read; ``CoreShare`` keeps other batches off its cores, save a fixed ``torch_threads``
        model's or after a bounded wait). One on a GPU costs its wall time. A batch is timed
        once it has its threads: waiting for a core costs nothing.

        A ``BaseException`` that is not an ``Exception`` (``SystemExit``, ``KeyboardInterrupt``,
        ``GeneratorExit``, a ``CancelledError`` or a custom one from the model) is turned into
        ``ForwardRaised`` here, on the thread: raised into the event loop it would end the
        process or the replica's task instead of one batch.
        """
        timer = PhaseTimer()
        try:
            outputs, threads, cost = self._run(
                version.device_models[self.slot], jobs, task, work_waiting, timer
            )
        except Exception:
            raise
        except BaseException as exc:  # the model's, not this thread's: nothing cancels it
            raise ForwardRaised(f"{type(exc).__name__}: {exc}") from exc
        return MeasuredBatch(outputs, threads, cost, timer.phases())

    def _run(
        self, model: DeviceModel, jobs: Sequence[Job], task: Task, work_waiting: bool, timer: PhaseTimer
    ) -> tuple[list[Any], int, float]:
        """The batch's outputs, the CPU threads it ran on (one on a GPU) and its core-seconds,
        timed once it has its threads: a wait for cores is no cost of the batch."""
        with torch.inference_mode():
            if self._stream is not None:
                wall = time.monotonic()
                with torch.cuda.stream(self._stream):
                    outputs = self._run_splitting(model, jobs, task, timer)
                self._stream.synchronize()
                return outputs, 1, time.monotonic() - wall
            if isinstance(self._threads, CoreShare):
                with self._threads.claim(work_waiting) as threads:
                    if threads > 1:  # on the process's one multi-thread lane (``wide_lane``)
                        wide = wide_lane().submit(self._run_wide, threads, model, jobs, task, timer)
                        return wide.result()
                    return self._run_cpu(1, model, jobs, task, timer)
            threads = self._threads or 1
            with holding(threads):
                return self._run_cpu(threads, model, jobs, task, timer)

    def _run_wide(
        self, threads: int, model: DeviceModel, jobs: Sequence[Job], task: Task, timer: PhaseTimer
    ) -> tuple[list[Any], int, float]:
        with torch.inference_mode():  # per thread: this is not the replica's
            return self._run_cpu(threads, model, jobs, task, timer)

    def _run_cpu(
        self, threads: int, model: DeviceModel, jobs: Sequence[Job], task: Task, timer: PhaseTimer
    ) -> tuple[list[Any], int, float]:
        """The batch on ``threads`` CPU threads of this thread: one thread costs its CPU time,
        several their wall time each."""
        _use_threads(threads)
        wall, cpu = time.monotonic(), time.thread_time()
        outputs = self._run_splitting(model, jobs, task, timer)
        if threads == 1:
            return outputs, 1, time.thread_time() - cpu
        return outputs, threads, (time.monotonic() - wall) * threads

    def _run_splitting(
        self, model: DeviceModel, jobs: Sequence[Job], task: Task, timer: PhaseTimer
    ) -> list[Any]:
        """Runs the batch; on CUDA out-of-memory, halves it and runs the halves in turn."""
        try:
            started = time.monotonic()
            staged = self._stage(jobs, model)
            staged_at = time.monotonic()
            logits = model(staged)
            if not bool(torch.isfinite(logits).all()):
                raise NonFiniteOutput("the model gave non-finite outputs (NaN or inf) for this batch")
            ran_at = time.monotonic()
            outputs = task.postprocess(logits, jobs)
            timer.input_s += staged_at - started
            timer.infer_s += ran_at - staged_at
            timer.output_s += time.monotonic() - ran_at
            return outputs
        except torch.OutOfMemoryError:
            if len(jobs) == 1:
                raise
            log.warning("out of memory on %s with batch %d: splitting", self.device, len(jobs))
            if self._stream is not None:
                torch.cuda.empty_cache()
            half = len(jobs) // 2
            first = self._run_splitting(model, jobs[:half], task, timer)
            return first + self._run_splitting(model, jobs[half:], task, timer)

    def _stage(self, jobs: Sequence[Job], model: DeviceModel) -> torch.Tensor:
        """The batch's model input on the device: images normalised there, tensors as sent."""
        images = [i for i, job in enumerate(jobs) if not job.normalised]
        if len(images) == len(jobs):
            return model.normalise(self._stage_pixels([job.pixels for job in jobs]))
        tensors = [i for i, job in enumerate(jobs) if job.normalised]
        given = torch.stack([jobs[i].pixels for i in tensors]).to(self.device, non_blocking=True)
        if not images:
            return given
        inputs = torch.empty((len(jobs), *given.shape[1:]), dtype=model.dtype, device=self.device)
        inputs[tensors] = given.to(model.dtype)
        inputs[images] = model.normalise(self._stage_pixels([jobs[i].pixels for i in images]))
        return inputs

    def _stage_pixels(self, pixels: list[torch.Tensor]) -> torch.Tensor:
        """uint8 batch on the device; through pinned memory and a non-blocking copy on CUDA."""
        if self._pinned is None:
            return torch.stack(pixels)
        staged = torch.stack(pixels, out=self._pinned[: len(pixels)])
        # Safe to reuse the pinned buffer next batch: run() synchronises the stream first.
        return staged.to(self.device, non_blocking=True)

    def submit(
        self, version: ModelVersion, jobs: Sequence[Job], task: Task, work_waiting: bool = False
    ) -> Future[MeasuredBatch]:
        """Queues one batch on this replica's thread, between the batches it serves."""
        return self._executor.submit(self.run_measured, version, jobs, task, work_waiting)

    def _fail(self, batch: Batch[Job, ModelVersion], exc: BaseException) -> None:
        if isinstance(exc, ServeError):
            batch.fail(exc)
            return
        log.error("batch of %d failed on %s", len(batch.items), self.device, exc_info=exc)
        batch.fail(InferenceFailed(f"the model failed on this batch: {type(exc).__name__}: {_short(exc)}"))

    def close(self) -> None:
        """Stops the thread after the batch it is running, if any."""
        self._executor.shutdown(wait=True, cancel_futures=True)


def _short(exc: BaseException) -> str:
    """An exception's message for a client: no object reprs or addresses, bounded length."""
    text = str(exc)
    if "0x" in text or " object at " in text:
        return "see the server log"
    return text[:300]
