"""A replica: one model's weights on one device, run by one thread that nothing else uses.

On a CPU replica the thread also decodes its batch's images first: torch's threads use every
core for the forward, and any other CPU work running beside it (a decode in another thread)
stalls their barriers, which measured here cost a third of the U-Net's throughput.

The replica pulls batches from its model's batcher while idle, stages the uint8 pixels (pinned
host memory and a ``non_blocking`` copy on its own CUDA stream, on a GPU), normalises on the
device, runs the forward under ``torch.inference_mode()``, postprocesses on the device, and
settles the batch's requests. A failing batch fails only its own requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from service.batching import Batch, DynamicBatcher
from service.config import ModelSpec
from service.decode import DecodedImage, prepare_image
from service.devices import CoreShare
from service.errors import InferenceFailed, NotReady, ServeError
from service.postprocess import Job, Postprocess, select_logits

log = logging.getLogger(__name__)

BatchObserver = Callable[[str, int, float, float], None]


class DeviceModel:
    """A loaded module on its device, with the normalisation and output choice it needs."""

    def __init__(self, module: torch.nn.Module, spec: ModelSpec, device: torch.device) -> None:
        self.module = module
        self.device = device
        self.input_spec = spec.input
        self.output_key = spec.output
        self.dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
        self.dtype = self.dtype or torch.float32
        channels = spec.input.channels
        mean = torch.tensor(spec.input.mean, dtype=torch.float32).expand(channels)
        std = torch.tensor(spec.input.std, dtype=torch.float32).expand(channels)
        # (x / 255 - mean) / std as one multiply-add on the device
        self._scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1).to(device, self.dtype)
        self._shift = (-mean / std).view(1, -1, 1, 1).to(device, self.dtype)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, C] on this device -> the logits tensor."""
        inputs = pixels.permute(0, 3, 1, 2).to(self.dtype).mul_(self._scale).add_(self._shift)
        return select_logits(self.module(inputs), self.output_key)


def _decoded(job: Job, model: DeviceModel) -> Job:
    if isinstance(job.image, DecodedImage):
        return job
    return Job(prepare_image(job.image, model.input_spec), job.top_k)


def _use_threads(threads: int) -> None:
    if torch.get_num_threads() != threads:  # a change resizes the thread pool: only when needed
        torch.set_num_threads(threads)


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
        self, batcher: DynamicBatcher[Job], postprocess: Postprocess, observe: BatchObserver
    ) -> None:
        """Pull and run batches until cancelled; every batch taken is settled or failed."""
        loop = asyncio.get_running_loop()
        while True:
            batch = await batcher.next_batch()
            self.busy = True
            started = time.monotonic()
            try:
                outputs = await loop.run_in_executor(
                    self._executor, self.run, batch.tag, batch.payloads, postprocess
                )
            except asyncio.CancelledError:
                batch.fail(NotReady("the server is shutting down; retry on another instance"))
                raise
            except Exception as exc:
                self._fail(batch, exc)
                continue
            finally:
                self.busy = False
            batch.settle(outputs)
            self.batches_served += 1
            observe(
                self.device_key, len(outputs), started - batch.oldest_enqueued_at, time.monotonic() - started
            )

    def run(self, version: Any, jobs: Sequence[Job], postprocess: Postprocess) -> list[Any]:
        """Blocking: decode what is not decoded yet, forward + postprocess, on this thread.

        An image that fails to decode fails alone: its output is the error.
        """
        model: DeviceModel = version.device_models[self.slot]
        outputs: list[Any] = [None] * len(jobs)
        ready: list[tuple[int, Job]] = []
        for index, job in enumerate(jobs):
            try:
                ready.append((index, _decoded(job, model)))
            except ServeError as error:
                outputs[index] = error
        if ready:
            results = self._forward([job for _, job in ready], model, postprocess)
            for (index, _), result in zip(ready, results, strict=True):
                outputs[index] = result
        return outputs

    def _forward(self, jobs: Sequence[Job], model: DeviceModel, postprocess: Postprocess) -> list[Any]:
        with torch.inference_mode():
            if self._stream is not None:
                with torch.cuda.stream(self._stream):
                    outputs = self._run_splitting(model, jobs, postprocess)
                self._stream.synchronize()
                return outputs
            if isinstance(self._threads, CoreShare):
                with self._threads.claim() as threads:
                    _use_threads(threads)
                    return self._run_splitting(model, jobs, postprocess)
            _use_threads(self._threads or 1)
            return self._run_splitting(model, jobs, postprocess)

    def _run_splitting(self, model: DeviceModel, jobs: Sequence[Job], postprocess: Postprocess) -> list[Any]:
        """Runs the batch; on CUDA out-of-memory, halves it and runs the halves in turn."""
        try:
            return postprocess(model(self._stage(jobs)), jobs)
        except torch.OutOfMemoryError:
            if len(jobs) == 1:
                raise
            log.warning("out of memory on %s with batch %d: splitting", self.device, len(jobs))
            if self._stream is not None:
                torch.cuda.empty_cache()
            half = len(jobs) // 2
            first = self._run_splitting(model, jobs[:half], postprocess)
            return first + self._run_splitting(model, jobs[half:], postprocess)

    def _stage(self, jobs: Sequence[Job]) -> torch.Tensor:
        """uint8 batch on the device; through pinned memory and a non-blocking copy on CUDA."""
        pixels = []
        for job in jobs:
            assert isinstance(job.image, DecodedImage), "run() decodes every job first"
            pixels.append(job.image.pixels)
        if self._pinned is None:
            return torch.stack(pixels)
        staged = torch.stack(pixels, out=self._pinned[: len(pixels)])
        # Safe to reuse the pinned buffer next batch: run() synchronises the stream first.
        return staged.to(self.device, non_blocking=True)

    def submit(self, version: Any, jobs: Sequence[Job], postprocess: Postprocess) -> Future[list[Any]]:
        """Queues one batch on this replica's thread, between the batches it serves."""
        return self._executor.submit(self.run, version, jobs, postprocess)

    def _fail(self, batch: Batch[Job], exc: Exception) -> None:
        if isinstance(exc, ServeError):
            batch.fail(exc)
            return
        log.exception("batch of %d failed on %s", len(batch.items), self.device)
        batch.fail(InferenceFailed(f"the model failed on this batch: {type(exc).__name__}: {exc}"))

    def close(self) -> None:
        """Stops the thread after the batch it is running, if any."""
        self._executor.shutdown(wait=True, cancel_futures=True)
