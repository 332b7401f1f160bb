"""Logits -> answers: pick the logits from a model's output, then classify or segment a batch.

``select_logits`` and the batch functions run on the replica's thread and device; the
results are small CPU objects. ``mask_png`` runs in the worker pool.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from service.decode import DecodedImage
from service.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Job:
    """One image of a request on its way through the batcher: decoded already, or only opened
    (header checked) when a CPU replica decodes it on its own thread between forwards."""

    image: DecodedImage | Image.Image
    top_k: int = 5


Postprocess = Callable[[torch.Tensor, Sequence[Job]], list[Any]]


@dataclass(frozen=True, slots=True)
class Classification:
    """Class indices and softmax scores, best first."""

    indices: list[int]
    scores: list[float]


@dataclass(frozen=True, slots=True)
class Segmentation:
    """A class-index mask at the input image's own size, as an array and as PNG bytes."""

    mask: np.ndarray
    png: bytes
    class_pixel_counts: dict[str, int]


def select_logits(output: Any, key: int | str | None) -> torch.Tensor:
    """The logits tensor of a forward's output; ``key`` indexes a tuple/list or a dict."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        chosen = output.get("out" if key is None else key)
        where = f"key {key!r}" if key is not None else "key 'out'"
        available = f"keys {sorted(map(str, output))}"
    elif isinstance(output, Sequence) and output:
        index = 0 if key is None else key
        chosen = output[index] if isinstance(index, int) and -len(output) <= index < len(output) else None
        where = f"index {index!r}"
        available = f"{len(output)} elements"
    else:
        raise ConfigError(f"the model returned {type(output).__name__}, not a tensor, tuple or dict")
    if not isinstance(chosen, torch.Tensor):
        raise ConfigError(
            f"the model's output has no tensor at {where} ({available}); set the model's 'output'"
        )
    return chosen


def classify(logits: torch.Tensor, jobs: Sequence[Job]) -> list[Classification]:
    """Softmax top-k per image; one device-to-host copy for the whole batch."""
    if logits.ndim != 2:
        raise ConfigError(
            f"a classification model must return [batch, classes] logits, got {list(logits.shape)}"
        )
    k = min(max(job.top_k for job in jobs), logits.shape[1])
    scores, indices = torch.softmax(logits.float(), dim=1).topk(k, dim=1)
    score_rows, index_rows = scores.cpu().tolist(), indices.cpu().tolist()
    return [
        Classification(index_row[: job.top_k], score_row[: job.top_k])
        for job, score_row, index_row in zip(jobs, score_rows, index_rows, strict=True)
    ]


def segment(logits: torch.Tensor, jobs: Sequence[Job]) -> list[Segmentation]:
    """Per image: logits upsampled to the image's own size, argmax, pixels per class."""
    if logits.ndim != 4:
        raise ConfigError(
            f"a segmentation model must return [batch, classes, H, W] logits, got {list(logits.shape)}"
        )
    if logits.shape[1] > 256:
        raise ConfigError(f"masks are 8-bit PNGs: at most 256 classes, got {logits.shape[1]}")
    results = []
    for row, job in zip(logits, jobs, strict=True):
        assert isinstance(job.image, DecodedImage)
        size = (job.image.height, job.image.width)
        upsampled = F.interpolate(row[None].float(), size=size, mode="bilinear", align_corners=False)
        mask = upsampled[0].argmax(dim=0).to(torch.uint8)
        counts = torch.bincount(mask.flatten(), minlength=row.shape[0]).cpu().tolist()
        array = mask.cpu().numpy()
        results.append(Segmentation(array, mask_png(array), {str(i): n for i, n in enumerate(counts)}))
    return results


def mask_png(mask: np.ndarray) -> bytes:
    """A single-channel PNG whose pixel values are class indices."""
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
