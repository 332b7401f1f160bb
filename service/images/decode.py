"""Image bytes -> uint8 HWC tensor at the model's input size (runs in a worker thread).

Normalisation is left to the replica, which does it on the whole batch on its device:
uint8 is a quarter of the bytes to pin and copy. Only the documented formats are opened, after a
structural pre-scan (``prescan``); whatever goes wrong with one image is that image's 400.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from service.config import InputSpec
from service.errors import BadImage, TooLarge
from service.images import prescan
from service.images.plain_png import PlainPng, plain_png

_MODES = {1: "L", 3: "RGB"}
# Measured here: a thread hop costs about what decoding a 128x128 image does.
INLINE_MAX_PIXELS = 128 * 128
# EXIF orientation -> the transposition that shows the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_QUARTER_TURNS = frozenset((5, 6, 7, 8))
# libjpeg scales by 1/2, 1/4 or 1/8 while decoding (DCT scaling): JPEGs are drafted to at least
# DRAFT_MARGIN times the model's input in each dimension, so the bilinear resize still averages.
_DRAFTABLE = frozenset(("JPEG", "MPO"))
DRAFT_MARGIN = 2
_MAX_DETAIL_CHARS = 120


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """One preprocessed image: ``pixels`` is uint8 [H, W, C] at the model's input size.

    Channels stay last (PIL's layout): the replica permutes the whole batch on its device,
    fused with the float conversion, instead of copying every image here. ``width`` and
    ``height`` are the upload's own oriented size (masks are answered at that size).
    """

    pixels: torch.Tensor
    width: int
    height: int


Opened = Image.Image | PlainPng
"""An upload whose header is read and checked, and whose pixels are not decoded yet."""


def decode_image(data: bytes, spec: InputSpec, *, max_pixels: int) -> DecodedImage:
    """Decode, orient, convert and resize one image; refuses bombs before the full decode."""
    return prepare_image(open_image(data, max_pixels=max_pixels), spec)


def open_image(data: bytes, *, max_pixels: int) -> Opened:
    """Pre-scans the structure and reads only the header: no pixel is decoded before the size check."""
    if not data:
        raise BadImage("the image is empty: send the image bytes as the body or a 'file' part")
    kind = prescan.scan(data)
    image = (plain_png(data) if kind == "PNG" else None) or _open_header(data, kind, max_pixels)
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise TooLarge(f"the image is {width}x{height}; at most {max_pixels} pixels are accepted")
    if width < 1 or height < 1:
        image.close()
        raise BadImage(f"the image has an empty size {width}x{height}")
    return image


def _open_header(data: bytes, kind: str, max_pixels: int) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=[kind])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TooLarge(f"the image has more than {max_pixels} pixels") from None
    except Exception as exc:  # any parser error is this image's fault, whatever its type
        raise BadImage(f"the {kind} image cannot be read: {describe(exc)}") from None


def prepare_image(image: Opened, spec: InputSpec) -> DecodedImage:
    """Full decode of an opened image, then orientation, channels and resize; closes ``image``.

    Every failure, of any exception type, is ``BadImage``: one broken upload never fails a batch.
    """
    try:
        return _prepare(image, spec)
    except Exception as exc:
        raise BadImage(f"the image does not decode: {describe(exc)}") from None
    finally:
        image.close()  # the caller's object would otherwise keep the full-resolution pixels


def is_tiny(images: list[Opened]) -> bool:
    """Small enough that decoding costs less than handing the work to another thread."""
    return sum(image.size[0] * image.size[1] for image in images) <= INLINE_MAX_PIXELS


def describe(exc: BaseException) -> str:
    """The exception's type, and its text only when short and free of object reprs or addresses."""
    text = str(exc)
    if not text or len(text) > _MAX_DETAIL_CHARS or "0x" in text or " object at " in text:
        return type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _prepare(image: Opened, spec: InputSpec) -> DecodedImage:
    if isinstance(image, PlainPng):  # upright: a plain PNG has no EXIF
        current, size = image.decode(), image.size
    else:
        current, size = _upright(image, spec)
    current = _replace(current, _to_mode(current, _MODES[spec.channels]))
    current = _replace(current, _resize(current, spec))
    # a writable copy that the tensor owns; the last image is freed with its last reference
    pixels = torch.frombuffer(bytearray(current.tobytes()), dtype=torch.uint8)
    width, height = current.size
    return DecodedImage(pixels.view(height, width, spec.channels), *size)


def _upright(image: Image.Image, spec: InputSpec) -> tuple[Image.Image, tuple[int, int]]:
    """The decoded image turned upright by its EXIF orientation, and that oriented size."""
    image.seek(0)  # animated GIF/WebP: the first frame
    if image.format in _DRAFTABLE:  # EXIF is in the header: orient, then decode only what is needed
        orientation = _orientation(image)
        size = _oriented_size(image.size, orientation)
        _draft(image, spec, orientation in _QUARTER_TURNS)
        image.load()
    else:
        image.load()  # a PNG's eXIf chunk may follow its pixels
        orientation = _orientation(image)
        size = _oriented_size(image.size, orientation)
    if orientation in _UPRIGHT:
        return _replace(image, image.transpose(_UPRIGHT[orientation])), size
    return image, size


def _replace(old: Image.Image, new: Image.Image) -> Image.Image:
    """Frees ``old``'s pixels as soon as the next step has its own copy (peak: two images, not four)."""
    if new is not old:
        old.close()
    return new


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation, 1 (upright) when absent; EXIF is parsed only where it can exist."""
    if "exif" not in image.info and image.format not in ("TIFF", "MPO"):
        return 1  # parsing EXIF costs more than decoding a small PNG
    value = image.getexif().get(0x0112, 1)
    return value if isinstance(value, int) else 1


def _oriented_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    width, height = size
    return (height, width) if orientation in _QUARTER_TURNS else (width, height)


def _draft(image: Image.Image, spec: InputSpec, turned: bool) -> None:
    """JPEG only: let libjpeg scale down while decoding, keeping DRAFT_MARGIN x the input size."""
    height, width = spec.size
    if turned:  # the stored image is the transpose of what the model sees
        width, height = height, width
    image.draft(image.mode, (DRAFT_MARGIN * width, DRAFT_MARGIN * height))


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """``mode`` ("L" or "RGB"); high-depth images are scaled to 8 bits first, never clipped."""
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit(image)
    return image if image.mode == mode else image.convert(mode)


def _to_8bit(image: Image.Image) -> Image.Image:
    """I;16* (and I, F holding 16-bit values) -> L by value/257, rounded; F in [0, 1] by x255.

    Pillow's own conversion clips: every 16-bit value >= 255 would become white.
    """
    array = np.asarray(image)
    if image.mode == "F":
        array = np.nan_to_num(array, nan=0.0, posinf=65535.0, neginf=0.0)
        if array.size and float(array.min()) >= 0.0 and float(array.max()) <= 1.0:
            return Image.fromarray(np.rint(array * 255.0).astype(np.uint8), "L")
    wide = np.clip(array, 0, 65535).astype(np.uint32)
    return Image.fromarray(((wide + 128) // 257).astype(np.uint8), "L")


def _resize(image: Image.Image, spec: InputSpec) -> Image.Image:
    height, width = spec.size
    if spec.resize == "center_crop":
        return ImageOps.fit(image, (width, height), method=Image.Resampling.BILINEAR)
    return image.resize((width, height), Image.Resampling.BILINEAR)
