"""The contract's preprocessing written out independently, to check served answers against.

decode -> channels -> stretch-resize (bilinear) -> [0, 1] -> (x - mean) / std -> model.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps


def preprocess(
    data: bytes, size: Sequence[int], channels: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, tuple[int, int]]:
    """[1, C, H, W] float input, and the oriented (width, height) of the upload."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    original = image.size
    image = image.convert("L" if channels == 1 else "RGB").resize(
        (size[1], size[0]), Image.Resampling.BILINEAR
    )
    array = np.asarray(image, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    x = torch.from_numpy(array.transpose(2, 0, 1).copy())
    x = (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    return x[None], original


@torch.inference_mode()
def class_probabilities(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.softmax(model(x), dim=1)[0]


@torch.inference_mode()
def segmentation_mask(model: torch.nn.Module, x: torch.Tensor, original: tuple[int, int]) -> np.ndarray:
    model.eval()
    logits = model(x)
    width, height = original
    upsampled = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    return upsampled[0].argmax(dim=0).to(torch.uint8).numpy()
