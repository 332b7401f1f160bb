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
# Measured here: a thread hop costs about what decoding a 128x128 image does.
INLINE_MAX_PIXELS = 128 * 128


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """One preprocessed image: ``pixels`` is uint8 [H, W, C] at the model's input size.

    Channels stay last (PIL's layout): the replica permutes the whole batch on its device,
    fused with the float conversion, instead of copying every image here.
    """

    pixels: torch.Tensor
    width: int
    height: int


def decode_image(data: bytes, spec: InputSpec, *, max_pixels: int) -> DecodedImage:
    """Decode, orient, convert and resize one image; refuses bombs before the full decode."""
    return prepare_image(open_image(data, max_pixels=max_pixels), spec)


def open_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Reads only the header: the size check happens before any pixel is decoded."""
    if not data:
        raise BadImage("the image is empty: send the image bytes as the body or a 'file' part")
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


def prepare_image(image: Image.Image, spec: InputSpec) -> DecodedImage:
    """Full decode of an opened image, then orientation, channels and resize."""
    try:
        image.seek(0)  # animated GIF/WebP: the first frame
        image.load()
        if _may_be_rotated(image):
            image = ImageOps.exif_transpose(image)
        width, height = image.size  # oriented, so masks match what the user sees
        image = _resize(image.convert(_MODES[spec.channels]), spec)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadImage(f"the image does not decode: {exc}") from None
    array = np.array(image, dtype=np.uint8)  # a writable copy that the tensor owns
    if array.ndim == 2:
        array = array[:, :, None]
    return DecodedImage(torch.from_numpy(array), width, height)


def prepare_images(images: list[Image.Image], spec: InputSpec) -> list[DecodedImage]:
    """Several opened images in order (one thread hop for a whole multipart request)."""
    return [prepare_image(image, spec) for image in images]


def is_tiny(images: list[Image.Image]) -> bool:
    """Small enough that decoding costs less than handing the work to another thread."""
    return sum(image.size[0] * image.size[1] for image in images) <= INLINE_MAX_PIXELS


def _may_be_rotated(image: Image.Image) -> bool:
    """Whether EXIF orientation can apply; parsing EXIF costs more than decoding a small PNG."""
    return "exif" in image.info or image.format in ("TIFF", "MPO")


def _resize(image: Image.Image, spec: InputSpec) -> Image.Image:
    height, width = spec.size
    if spec.resize == "center_crop":
        return ImageOps.fit(image, (width, height), method=Image.Resampling.BILINEAR)
    return image.resize((width, height), Image.Resampling.BILINEAR)
