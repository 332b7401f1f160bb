"""Data for the demo models, always passed through the server's preprocessing pipeline.

The models only ever see what ``preprocess`` makes (the contract: convert, stretch to ``size``
with PIL bilinear, scale to [0, 1], normalise), so the served predictions match the held-out
metrics. Digits come from scikit-learn's bundled ``load_digits`` (no network); shapes are drawn
here. Every function is deterministic given its seed or ``numpy`` generator.
"""

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor

from models.demo import DIGITS, SHAPES, DemoModel

__all__ = [
    "digit_image",
    "digits_dataset",
    "digits_split",
    "preprocess",
    "shapes_batch",
    "shapes_image",
]

# The held-out digits are fixed for good: the split seed is not the training seed.
_DIGITS_SPLIT_SEED = 0
_DIGITS_TEST_FRACTION = 0.25
# Drawn shapes images have random sizes and aspect ratios (stretched by the pipeline), so
# users' larger, non-square images work too.
_MIN_WIDTH, _MAX_WIDTH, _MAX_ASPECT = 48, 200, 1.6
_RESAMPLINGS = (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)
# Circumradius over "radius" per class (circle, square, triangle): squares have side 2 * radius.
_BOUND = {1: 1.0, 2: math.sqrt(2.0), 3: 1.3}
_PLACEMENT_TRIES = 50


def preprocess(image: Image.Image, demo: DemoModel) -> Tensor:
    """The contract's input pipeline: a ``(channels, H, W)`` float32 tensor for ``demo``."""
    height, width = demo.size
    converted = image.convert("L" if demo.channels == 1 else "RGB")
    resized = converted.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.float32).reshape(height, width, demo.channels) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    mean = torch.tensor(demo.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(demo.std, dtype=torch.float32).view(-1, 1, 1)
    return (tensor - mean) / std


def digit_image(pixels: np.ndarray) -> Image.Image:
    """An 8x8 ``load_digits`` array (0..16, ink high) as a grayscale image, white on black."""
    values = np.rint(np.asarray(pixels, dtype=np.float64) * 255.0 / 16.0)
    return Image.fromarray(values.clip(0, 255).astype(np.uint8))  # 2-D uint8: mode "L"


def digits_split(split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 8, 8), labels (N,))`` of a fixed stratified 75/25 split of ``load_digits``."""
    digits = load_digits()
    train, test = train_test_split(
        np.arange(len(digits.target)),
        test_size=_DIGITS_TEST_FRACTION,
        stratify=digits.target,
        random_state=_DIGITS_SPLIT_SEED,
    )
    index = train if split == "train" else test
    return digits.images[index], digits.target[index]


def _augmented_digit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The digit redrawn as a user might send it: larger, stretched, shifted, maybe inverted."""
    side = int(rng.integers(8, 97))
    width = max(8, round(side * rng.uniform(0.8, 1.25)))
    height = max(8, round(side * rng.uniform(0.8, 1.25)))
    resample = _RESAMPLINGS[int(rng.integers(len(_RESAMPLINGS)))]
    digit = image.resize((width, height), resample)
    # Up to 15% margin on each side, drawn independently: shifts and shrinks the digit.
    left, right, top, bottom = (int(rng.integers(0, max(1, side * 15 // 100) + 1)) for _ in "ltrb")
    canvas = Image.new("L", (width + left + right, height + top + bottom), 0)
    canvas.paste(digit, (left, top))
    array = np.asarray(canvas, dtype=np.float32) * rng.uniform(0.6, 1.0)  # ink intensity
    if rng.random() < 0.5:  # black on white, as digits are usually written
        array = 255.0 - array
    return Image.fromarray(np.rint(array).astype(np.uint8))


def digits_dataset(
    split: Literal["train", "test"], rng: np.random.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``(x (N, 1, 32, 32), y (N,))`` through the pipeline; augmented when ``rng`` is given."""
    images, labels = digits_split(split)
    tensors = []
    for pixels in images:
        image = digit_image(pixels)
        if rng is not None:
            image = _augmented_digit(image, rng)
        tensors.append(preprocess(image, DIGITS))
    return torch.stack(tensors), torch.from_numpy(labels).long()


def _shape_polygon(kind: int, cx: float, cy: float, radius: float, angle: float) -> list[float]:
    """Vertices of a square (kind 2) or equilateral triangle (kind 3) around a centre."""
    corners = 4 if kind == 2 else 3
    points: list[float] = []
    for i in range(corners):
        theta = angle + 2.0 * math.pi * i / corners
        points += [cx + _BOUND[kind] * radius * math.cos(theta), cy + _BOUND[kind] * radius * math.sin(theta)]
    return points


def _distinct_colour(background: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    """A random colour at least 120 (summed over RGB) away from the background's base colour."""
    while True:
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - background).sum() >= 120:
            return int(colour[0]), int(colour[1]), int(colour[2])


def _place(
    kind: int,
    width: int,
    height: int,
    placed: list[tuple[float, float, float]],
    rng: np.random.Generator,
) -> tuple[float, float, float] | None:
    """``(cx, cy, radius)`` of a shape clear of the ``placed`` ones, shrinking on each try."""
    for attempt in range(_PLACEMENT_TRIES):
        radius = min(width, height) * rng.uniform(0.12, 0.3) * 0.97**attempt
        bound = _BOUND[kind] * radius
        cx = rng.uniform(bound, width - bound)
        cy = rng.uniform(bound, height - bound)
        if all(math.hypot(cx - x, cy - y) > bound + other for x, y, other in placed):
            return cx, cy, radius
    return None


def shapes_image(
    rng: np.random.Generator, width: int, height: int, classes: Sequence[int] | None = None
) -> tuple[Image.Image, Image.Image]:
    """An RGB image of shapes on a noisy background and its ``L`` mask of class indices.

    Classes: 0 background, 1 circle, 2 square, 3 triangle. ``classes`` names the shapes to
    draw, else one to three random ones; shapes do not overlap, and one that finds no room
    is left out (rare; never the first).
    """
    if classes is None:
        classes = [int(c) for c in rng.integers(1, 4, size=int(rng.integers(1, 4)))]
    background = rng.integers(0, 256, size=3)
    fill = (int(background[0]), int(background[1]), int(background[2]))
    image, mask = Image.new("RGB", (width, height), fill), Image.new("L", (width, height), 0)
    paint, label = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    placed: list[tuple[float, float, float]] = []
    for kind in classes:
        where = _place(kind, width, height, placed, rng)
        if where is None:
            continue
        cx, cy, radius = where
        placed.append((cx, cy, _BOUND[kind] * radius))
        colour = _distinct_colour(background, rng)
        if kind == 1:
            box = (cx - radius, cy - radius, cx + radius, cy + radius)
            paint.ellipse(box, fill=colour)
            label.ellipse(box, fill=kind)
        else:
            points = _shape_polygon(kind, cx, cy, radius, rng.uniform(0.0, 2.0 * math.pi))
            paint.polygon(points, fill=colour)
            label.polygon(points, fill=kind)
    noise = rng.normal(0.0, rng.uniform(4.0, 24.0), size=(height, width, 3))
    noisy = (np.asarray(image, dtype=np.float64) + noise).clip(0, 255)
    return Image.fromarray(np.rint(noisy).astype(np.uint8)), mask  # (H, W, 3) uint8: "RGB"


def shapes_batch(n: int, seed: int | np.random.Generator) -> tuple[Tensor, Tensor]:
    """``(x (n, 3, H, W), y (n, H, W) int64)``: random-size images through the pipeline.

    The masks are resized with nearest-neighbour sampling to the model's input size, the
    resolution at which the model predicts. A generator ``seed`` is advanced, not copied.
    """
    rng = np.random.default_rng(seed)
    height, width = SHAPES.size
    images, masks = [], []
    for _ in range(n):
        image_width = int(rng.integers(_MIN_WIDTH, _MAX_WIDTH + 1))
        image_height = round(image_width * _MAX_ASPECT ** rng.uniform(-1.0, 1.0))
        image, mask = shapes_image(rng, image_width, image_height)
        images.append(preprocess(image, SHAPES))
        small = mask.resize((width, height), Image.Resampling.NEAREST)
        masks.append(torch.from_numpy(np.asarray(small, dtype=np.int64).copy()))
    return torch.stack(images), torch.stack(masks)
