"""Image bytes -> uint8 CHW tensor at the model's input size (runs in a worker thread).

Normalisation is left to the replica, which does it on the whole batch on its device:
uint8 is a quarter of the bytes to pin and copy.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from service.config import InputSpec
from service.errors import BadImage, TooLarge

_MODES = {1: "L", 3: "RGB"}


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """One preprocessed image: ``pixels`` is uint8 [C, H, W] at the model's input size."""

    pixels: torch.Tensor
    width: int
    height: int


def decode_image(data: bytes, spec: InputSpec, *, max_pixels: int) -> DecodedImage:
    """Decode, orient, convert and resize one image; refuses bombs before the full decode."""
    if not data:
        raise BadImage("the image is empty: send the image bytes as the body or a 'file' part")
    image = _open(data, max_pixels)
    try:
        image.seek(0)  # animated GIF/WebP: the first frame
        image = ImageOps.exif_transpose(image)
        width, height = image.size  # oriented, so masks match what the user sees
        image = _resize(image.convert(_MODES[spec.channels]), spec)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadImage(f"the image does not decode: {exc}") from None
    array = np.asarray(image, dtype=np.uint8)
    array = array[None, :, :] if array.ndim == 2 else array.transpose(2, 0, 1)
    return DecodedImage(torch.from_numpy(np.ascontiguousarray(array)), width, height)


def decode_images(blobs: list[bytes], spec: InputSpec, *, max_pixels: int) -> list[DecodedImage]:
    """Decode several images in order (one thread hop for a whole multipart request)."""
    return [decode_image(blob, spec, max_pixels=max_pixels) for blob in blobs]


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TooLarge(f"the image has more than {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BadImage(f"the body is not an image this server can decode ({exc})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise TooLarge(f"the image is {width}x{height}; at most {max_pixels} pixels are accepted")
    if width < 1 or height < 1:
        raise BadImage(f"the image has an empty size {width}x{height}")
    return image


def _resize(image: Image.Image, spec: InputSpec) -> Image.Image:
    height, width = spec.size
    if spec.resize == "center_crop":
        return ImageOps.fit(image, (width, height), method=Image.Resampling.BILINEAR)
    return image.resize((width, height), Image.Resampling.BILINEAR)
