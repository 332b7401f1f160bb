"""Replica on the CPU with stand-in models: out-of-memory splitting, per-image decode failures."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from service.config import InputSpec, ModelSpec
from service.decode import decode_image, open_image
from service.devices import CoreShare
from service.errors import BadImage
from service.postprocess import Job, classify
from service.replica import DeviceModel, Replica

SPEC = ModelSpec(
    architecture="tests.archs:slow_classifier",
    checkpoint="unused.pt",
    input=InputSpec(size=(8, 8), channels=1, mean=(0.5,), std=(0.5,)),
)


class _MemoryBound(torch.nn.Module):
    """Raises CUDA's out-of-memory error for batches above ``limit``; records batch sizes."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.head = torch.nn.Linear(1, 3)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.head(x.mean(dim=(2, 3)))


def _png(value: int, size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _replica_and_version(module: torch.nn.Module) -> tuple[Replica, SimpleNamespace]:
    replica = Replica(0, "m", torch.device("cpu"), input_shape=(8, 8, 1), max_batch_size=8, threads=1)
    version = SimpleNamespace(device_models=(DeviceModel(module.eval(), SPEC, torch.device("cpu")),))
    return replica, version


def test_out_of_memory_splits_the_batch_until_it_fits() -> None:
    module = _MemoryBound(limit=2)
    replica, version = _replica_and_version(module)
    jobs = [Job(decode_image(_png(10 * i), SPEC.input, max_pixels=10_000), 3) for i in range(7)]
    try:
        outputs = replica.run(version, jobs, classify)
    finally:
        replica.close()
    assert len(outputs) == 7 and all(len(o.indices) == 3 for o in outputs)
    assert max(size for size in module.seen if size <= 2) == 2 and 7 in module.seen
    with torch.inference_mode():  # each answer is its own image's, in order
        direct = [classify(version.device_models[0](job.image.pixels[None]), [job])[0] for job in jobs]
    assert [o.indices for o in outputs] == [d.indices for d in direct]


def test_an_image_that_fails_to_decode_on_the_replica_fails_alone() -> None:
    replica, version = _replica_and_version(_MemoryBound(limit=64))
    good = _png(200, size=(300, 200))
    # whole chunks (the pre-scan refuses truncated ones when opening), corrupt pixel data
    broken = good[:60] + b"\xff" * (len(good) - 72) + good[-12:]
    jobs = [Job(open_image(blob, max_pixels=10**6), 2) for blob in (good, broken, good)]
    try:
        outputs = replica.run(version, jobs, classify)
    finally:
        replica.close()
    assert isinstance(outputs[1], BadImage)
    assert outputs[0].indices == outputs[2].indices


def test_core_share_gives_all_cores_alone_and_splits_them_together() -> None:
    share = CoreShare(4)
    with share.claim() as alone:
        assert alone == 4
        with share.claim() as second:
            assert second == 2
    with share.claim() as again:
        assert again == 4
