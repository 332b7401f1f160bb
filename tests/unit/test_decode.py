"""Decode and preprocess as pure functions: formats, orientation, channels, limits."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.config import InputSpec
from service.decode import decode_image, is_tiny, open_image
from service.errors import BadImage, TooLarge

GREY = InputSpec(size=(8, 12), channels=1, mean=(0.5,), std=(0.5,))
RGB = InputSpec(size=(8, 12), channels=3)


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _gradient(width: int = 40, height: int = 30) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    return Image.fromarray(np.stack([x, x[::-1, ::-1], np.full_like(x, 90)], axis=2))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_every_format_decodes_to_the_input_size(fmt: str) -> None:
    decoded = decode_image(_encode(_gradient(), fmt), RGB, max_pixels=10_000)
    assert decoded.pixels.shape == (8, 12, 3)
    assert decoded.pixels.dtype.is_floating_point is False
    assert (decoded.width, decoded.height) == (40, 30)


def test_resize_is_a_bilinear_stretch_of_the_converted_image() -> None:
    image = _gradient()
    decoded = decode_image(_encode(image, "PNG"), GREY, max_pixels=10_000)
    expected = np.asarray(image.convert("L").resize((12, 8), Image.Resampling.BILINEAR))
    assert np.array_equal(decoded.pixels[:, :, 0].numpy(), expected)


def test_exif_orientation_is_applied_before_resizing() -> None:
    stored = Image.new("RGB", (40, 20), (10, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    decoded = decode_image(_encode(stored, "JPEG", exif=exif.tobytes()), RGB, max_pixels=10_000)
    assert (decoded.width, decoded.height) == (20, 40)


def test_animated_gif_uses_its_first_frame() -> None:
    frames = [Image.new("L", (16, 16), value) for value in (20, 240)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(buffer.getvalue(), GREY, max_pixels=10_000)
    assert int(decoded.pixels.float().mean()) == 20


@pytest.mark.parametrize("mode", ["RGBA", "P", "LA", "I;16", "CMYK", "1"])
def test_any_mode_converts_to_the_model_channels(mode: str) -> None:
    image = _gradient().convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    for spec, channels in ((GREY, 1), (RGB, 3)):
        assert decode_image(_encode(image, fmt), spec, max_pixels=10_000).pixels.shape[2] == channels


def test_pixel_limit_is_enforced_from_the_header() -> None:
    bomb = _encode(Image.new("1", (5000, 5000)), "PNG")
    with pytest.raises(TooLarge, match="5000x5000"):
        open_image(bomb, max_pixels=1_000_000)


@pytest.mark.parametrize(
    "data", [b"", b"not an image", _encode(_gradient(), "PNG")[:60], b"\x89PNG\r\n\x1a\n" + b"\0" * 40]
)
def test_undecodable_bytes_are_bad_images(data: bytes) -> None:
    with pytest.raises(BadImage):
        decode_image(data, GREY, max_pixels=10_000)


def test_tiny_images_are_decoded_inline_large_ones_are_not() -> None:
    small = open_image(_encode(Image.new("L", (28, 28)), "PNG"), max_pixels=10**8)
    large = open_image(_encode(Image.new("L", (1000, 1000)), "PNG"), max_pixels=10**8)
    assert is_tiny([small]) and not is_tiny([large]) and not is_tiny([small] * 100)
