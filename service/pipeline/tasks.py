"""What differs between kinds of model: one ``Task`` per kind, chosen once when the config is read.

A task checks the logits' shape, and turns a batch of them into one small CPU result per image
on the replica's thread and device (one device-to-host copy per batch). What each image's
answer needs (top-k, the whole softmax row, a mask at some size, its PNG) travels with the
image in its ``Job``, so every door (``/predict``, v2 REST, v2 gRPC) shares one batch.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from service.config import ModelSpec
from service.errors import ConfigError
from service.images.decode import DecodedImage
from service.images.plain_png import grey_png

Labels = Sequence[str] | None  # a model's class names, index by index, when configured


@dataclass(frozen=True, slots=True)
class Wants:
    """What the answers of one request need; the same for each of its images."""

    top_k: int = 5
    probabilities: bool = False  # classification: the whole softmax row too
    mask_png: bool = True  # segmentation: the mask encoded as a PNG too
    mask_at_input_size: bool = False  # segmentation: at the model's input size, not the image's


@dataclass(frozen=True, slots=True)
class Job:
    """One image of a request, ready to stack: ``pixels`` is uint8 ``[H, W, C]`` (an image the
    replica normalises) or float32 ``[C, H, W]`` (a tensor already normalised by the client)."""

    pixels: torch.Tensor
    output_size: tuple[int, int]  # (H, W) a segmentation mask is answered at
    wants: Wants = Wants()

    @classmethod
    def of_image(cls, image: DecodedImage, wants: Wants = Wants()) -> Job:
        """A decoded image's job; masks are answered at the image's own size."""
        return cls(image.pixels, (image.height, image.width), wants)

    @property
    def normalised(self) -> bool:
        return self.pixels.is_floating_point()


@dataclass(frozen=True, slots=True)
class Classification:
    """Class indices and softmax scores, best first; ``probabilities`` when the job asked."""

    indices: list[int]
    scores: list[float]
    probabilities: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class Segmentation:
    """A class-index mask at the job's output size, its PNG when asked, and pixels per class."""

    mask: np.ndarray
    png: bytes | None
    class_pixel_counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class Hints:
    """What the playground offers for a kind of model, so the page never branches on its name."""

    top_k: bool  # a top-k field: answers are ranked classes
    mask: bool  # answers are masks to draw


class Task:
    """Everything that differs between kinds of model, in one stateless object per kind.

    The task is chosen once, when the config is read (``task_for``): the replica's
    postprocess, ``/predict``'s answer body, the v2 outputs (names, datatypes, shapes, values)
    and the playground's hints all come from it, so nothing else branches on a task's name.
    """

    name: ClassVar[str]
    outputs: ClassVar[tuple[str, ...]]  # the v2 outputs, in the order they are answered
    ranked_output: ClassVar[str | None] = None  # the v2 output the classification extension ranks
    playground: ClassVar[Hints]

    def check(self, logits: torch.Tensor) -> None:
        """Raises ``ConfigError`` when the logits cannot be this task's."""
        raise NotImplementedError

    def postprocess(self, logits: torch.Tensor, jobs: Sequence[Job]) -> list[Any]:
        """One result per job, in order (runs on the replica's thread and device)."""
        raise NotImplementedError

    def classes(self, result: Any) -> int:
        """How many classes the model has, read off one result that asked for everything."""
        raise NotImplementedError

    def predict_body(self, results: Sequence[Any], labels: Sequence[str] | None) -> list[dict[str, Any]]:
        """``/predict``'s ``predictions``: one entry per image, in order."""
        raise NotImplementedError

    def png_answer(self, results: Sequence[Any]) -> bytes | None:
        """The answer as a PNG, for a client that accepts ``image/png``; None where it has none."""
        return None

    def v2_outputs(self, classes: int, size: tuple[int, int]) -> list[dict[str, Any]]:
        """The v2 metadata of each output, ``-1`` for the batch dimension."""
        raise NotImplementedError

    def v2_wants(self, wanted: Sequence[tuple[str, int | None]]) -> Wants:
        """What a v2 request's images need, from the (output, ranked count) pairs it asked for:
        top-k as deep as the deepest ranking, whole rows only when the ranked output is asked
        unranked, masks at the model's input size without PNGs (v2 answers tensors)."""
        return Wants(
            top_k=max((ranked or 1 for _, ranked in wanted), default=1),
            probabilities=any(name == self.ranked_output and not ranked for name, ranked in wanted),
            mask_png=False,
            mask_at_input_size=True,
        )

    def v2_values(
        self, output: str, results: Sequence[Any], ranked: int | None, labels: Labels
    ) -> tuple[str, np.ndarray]:
        """The v2 datatype and the stacked values of ``output`` over a request's results;
        ``ranked`` is the classification extension's count (only for ``ranked_output``)."""
        raise NotImplementedError


class ClassificationTask(Task):
    name = "classification"
    outputs = ("probabilities", "class_index")
    ranked_output = "probabilities"
    playground = Hints(top_k=True, mask=False)

    def check(self, logits: torch.Tensor) -> None:
        if logits.ndim != 2:
            raise ConfigError(
                f"a classification model must return [batch, classes] logits, got {list(logits.shape)}"
            )

    def postprocess(self, logits: torch.Tensor, jobs: Sequence[Job]) -> list[Classification]:
        self.check(logits)
        probabilities = torch.softmax(logits.float(), dim=1)
        k = min(max(job.wants.top_k for job in jobs), logits.shape[1])
        scores, indices = probabilities.topk(k, dim=1)
        score_rows, index_rows = scores.cpu().tolist(), indices.cpu().tolist()
        rows = probabilities.cpu().numpy() if any(job.wants.probabilities for job in jobs) else None
        return [
            Classification(
                index_row[: job.wants.top_k],
                score_row[: job.wants.top_k],
                rows[i] if rows is not None and job.wants.probabilities else None,
            )
            for i, (job, score_row, index_row) in enumerate(zip(jobs, score_rows, index_rows, strict=True))
        ]

    def classes(self, result: Classification) -> int:
        assert result.probabilities is not None  # the warm-up asks for them
        return len(result.probabilities)

    def predict_body(
        self, results: Sequence[Classification], labels: Sequence[str] | None
    ) -> list[dict[str, Any]]:
        """Per image: the best class at top level, and the top-k list best first."""
        predictions = []
        for result in results:
            top_k = [
                {"label": _label(labels, index), "class_index": index, "score": score}
                for index, score in zip(result.indices, result.scores, strict=True)
            ]
            predictions.append({**top_k[0], "top_k": top_k})
        return predictions

    def v2_outputs(self, classes: int, size: tuple[int, int]) -> list[dict[str, Any]]:
        return [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
            {"name": "class_index", "datatype": "INT64", "shape": [-1]},
        ]

    def v2_values(
        self, output: str, results: Sequence[Classification], ranked: int | None, labels: Labels
    ) -> tuple[str, np.ndarray]:
        if output == "class_index":
            return "INT64", np.array([result.indices[0] for result in results], dtype=np.int64)
        if ranked:
            return "BYTES", _class_strings(results, ranked, labels)
        rows = [result.probabilities for result in results]
        return "FP32", np.stack(rows).astype(np.float32)  # type: ignore[arg-type]


class SegmentationTask(Task):
    name = "segmentation"
    outputs = ("mask",)
    playground = Hints(top_k=False, mask=True)

    def check(self, logits: torch.Tensor) -> None:
        if logits.ndim != 4:
            raise ConfigError(
                f"a segmentation model must return [batch, classes, H, W] logits, got {list(logits.shape)}"
            )
        if logits.shape[1] > 256:
            raise ConfigError(f"masks are 8-bit: at most 256 classes, got {logits.shape[1]}")

    def postprocess(self, logits: torch.Tensor, jobs: Sequence[Job]) -> list[Segmentation]:
        """Per image: logits upsampled to its output size, argmax, pixels per class.

        The images of one output size (a batch of one camera's frames is one group) go through
        each op together and reach the host in one copy: a replica's Python between torch's
        kernels holds the GIL that every other replica and the event loop wait for, and per
        image the demo U-Net's batch of 4 made 60 such calls where per group it makes 15.
        """
        self.check(logits)
        scores = logits.float()
        groups: dict[tuple[int, int], list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(job.output_size, []).append(index)
        results: dict[int, Segmentation] = {}
        for size, indices in groups.items():
            group = scores if len(indices) == len(jobs) else scores[indices]
            if tuple(group.shape[2:]) != size:
                group = F.interpolate(group, size=size, mode="bilinear", align_corners=False)
            masks = class_mask(group).cpu()
            for index, mask in zip(indices, masks, strict=True):
                results[index] = _segmentation(mask, scores.shape[1], jobs[index].wants)
        return [results[index] for index in range(len(jobs))]

    def classes(self, result: Segmentation) -> int:
        return len(result.class_pixel_counts)

    def predict_body(
        self, results: Sequence[Segmentation], labels: Sequence[str] | None
    ) -> list[dict[str, Any]]:
        """Per image: its size, the class-index mask as base64 PNG, and pixels per class
        (``/predict``'s jobs always ask for the PNG)."""
        body = []
        for result in results:
            assert result.png is not None, "predict_body needs jobs that asked for the mask PNG"
            body.append(
                {
                    "width": int(result.mask.shape[1]),
                    "height": int(result.mask.shape[0]),
                    "mask_png_base64": base64.b64encode(result.png).decode("ascii"),
                    "class_pixel_counts": result.class_pixel_counts,
                }
            )
        return body

    def png_answer(self, results: Sequence[Segmentation]) -> bytes | None:
        """The one image's mask (a PNG answers one image only)."""
        return results[0].png if len(results) == 1 else None

    def v2_outputs(self, classes: int, size: tuple[int, int]) -> list[dict[str, Any]]:
        return [{"name": "mask", "datatype": _mask_type(classes), "shape": [-1, *size]}]

    def v2_values(
        self, output: str, results: Sequence[Segmentation], ranked: int | None, labels: Labels
    ) -> tuple[str, np.ndarray]:
        stacked = np.stack([result.mask for result in results])
        return _mask_type(len(results[0].class_pixel_counts)), stacked


def _segmentation(mask: torch.Tensor, classes: int, wants: Wants) -> Segmentation:
    counts = torch.bincount(mask.flatten(), minlength=classes).tolist()
    array = mask.numpy()
    png = grey_png(array) if wants.mask_png else None
    return Segmentation(array, png, {str(i): n for i, n in enumerate(counts)})


def class_mask(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(dim=-3)`` as uint8 for [..., classes, H, W] scores: the first class of
    the highest score per pixel.

    On a CPU, torch's argmax over an outer dim (NCHW scores, as the upsampled logits are)
    builds a TensorIterator per output chunk inside its parallel region, and its threads'
    reference counts of the one input contend: 5.7 ms for a 4x256x256 mask on two threads,
    half of the demo U-Net's whole request. One class at a time with elementwise ops takes
    0.6 ms (12.6 ms against 25.6 at 150 classes). Scores with the classes innermost
    (channels_last), and every GPU, keep torch's argmax, which is fast there.
    """
    if scores.device.type != "cpu" or scores.stride(-3) == 1:
        return scores.argmax(dim=-3).to(torch.uint8)
    best = scores.select(-3, 0)
    mask = torch.zeros(best.shape, dtype=torch.uint8, device=scores.device)
    for index in range(1, scores.shape[-3]):
        candidate = scores.select(-3, index)
        mask.masked_fill_(candidate > best, index)  # strictly higher: the first maximum wins
        best = torch.maximum(best, candidate)
    return mask


_TASKS: dict[str, Task] = {task.name: task for task in (ClassificationTask(), SegmentationTask())}


def task_for(spec: ModelSpec) -> Task:
    """The task object of a configured model (the config allows only known names)."""
    return _TASKS[spec.task]


def task_names() -> set[str]:
    """The kinds of model there are objects for (the config's ``task`` must name one)."""
    return set(_TASKS)


def _label(labels: Sequence[str] | None, index: int) -> str:
    if labels is not None and index < len(labels):
        return labels[index]
    return str(index)


def _class_strings(results: Sequence[Classification], count: int, labels: Sequence[str] | None) -> np.ndarray:
    """Triton's classification extension: ``"score:index"`` or ``"score:index:label"``, best first."""
    rows = []
    for result in results:
        row = []
        for index, score in list(zip(result.indices, result.scores, strict=True))[:count]:
            label = f":{labels[index]}" if labels is not None and index < len(labels) else ""
            row.append(f"{score:f}:{index}{label}".encode())
        rows.append(row)
    values = np.empty((len(rows), len(rows[0])), dtype=object)
    values[:] = rows
    return values


def _mask_type(classes: int) -> str:
    return "UINT8" if classes <= 256 else "INT32"


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
