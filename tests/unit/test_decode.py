"""Decode and preprocess as pure functions: formats, orientation, channels, limits."""

from __future__ import annotations

import io
import struct
import time

import numpy as np
import pytest
from PIL import Image, ImageOps

from service.config import InputSpec
from service.errors import BadImage, TooLarge
from service.images import decode as decode_module
from service.images.decode import decode_image, describe, is_tiny, open_image, prepare_image
from tests.support import crafted
from tests.support.reference import preprocess

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


def test_16_bit_grey_is_scaled_not_clipped() -> None:
    """Pillow's own I;16 -> L makes every value >= 255 white; here a 16-bit PNG equals its 8-bit twin."""
    eight = np.asarray(_gradient(40, 30).convert("L"))
    sixteen = eight.astype(np.uint16) * 257 + np.random.default_rng(0).integers(-128, 128, eight.shape)
    sixteen = np.clip(sixteen, 0, 65535)
    for spec in (GREY, RGB):
        got = decode_image(crafted.png_16bit_grey(sixteen), spec, max_pixels=10_000).pixels.numpy()
        twin = decode_image(_encode(Image.fromarray(eight), "PNG"), spec, max_pixels=10_000).pixels.numpy()
        assert np.abs(got.astype(int) - twin).max() <= 1
    with Image.open(io.BytesIO(crafted.png_16bit_grey(sixteen))) as clipped:
        assert np.asarray(clipped.convert("L")).min() == 255  # what Pillow alone would give


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F"])
def test_high_depth_modes_map_65535_to_255(mode: str) -> None:
    values = np.array([[0, 128, 129, 257 * 100, 65535, 65535]], dtype="<u2")
    if mode == "I;16B":
        image = Image.frombytes(mode, (6, 1), values.astype(">u2").tobytes())
    else:
        image = Image.frombytes("I;16", (6, 1), values.tobytes())
        image = image if mode == "I;16" else image.convert(mode)
    got = decode_image(_encode(image, "TIFF"), InputSpec(size=(1, 6), channels=1), max_pixels=100)
    assert got.pixels[0, :, 0].tolist() == [0, 0, 1, 100, 255, 255]


def test_float_images_in_0_1_are_scaled_to_255() -> None:
    image = Image.frombytes("F", (3, 1), np.array([0.0, 0.5, 1.0], dtype="<f4").tobytes())
    got = decode_image(_encode(image, "TIFF"), InputSpec(size=(1, 3), channels=1), max_pixels=100)
    assert got.pixels[0, :, 0].tolist() == [0, 128, 255]


def test_48_bit_rgb_png_equals_its_8_bit_twin() -> None:
    eight = np.asarray(_gradient(40, 30))
    decoded = decode_image(crafted.png_16bit_rgb(eight.astype(np.uint16) * 257), RGB, max_pixels=10_000)
    twin = decode_image(_encode(Image.fromarray(eight), "PNG"), RGB, max_pixels=10_000)
    assert np.abs(decoded.pixels.numpy().astype(int) - twin.pixels.numpy()).max() <= 1


def _photo(width: int, height: int) -> Image.Image:
    """Smooth content with grain, like a camera picture."""
    base = np.asarray(crafted.noise(width, height, seed=3)).astype(np.int16)
    grain = np.random.default_rng(1).integers(-20, 21, base.shape)
    return Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("orientation", [1, 6])
def test_large_jpegs_are_drafted_close_to_a_full_decode(orientation: int) -> None:
    """DCT scaling to >= 2x the input keeps the answer within 3 levels of decoding every pixel."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(_photo(1600, 1200), "JPEG", quality=90, exif=exif.tobytes())
    spec = InputSpec(size=(48, 64), channels=3)
    decoded = decode_image(data, spec, max_pixels=10**7)
    x, original = preprocess(data, spec.size, 3, (0.0,), (1.0,))  # the contract's full decode
    reference = np.rint(x[0].permute(1, 2, 0).numpy() * 255).astype(int)
    diff = np.abs(decoded.pixels.numpy().astype(int) - reference)
    assert (decoded.width, decoded.height) == original == ((1200, 1600) if orientation == 6 else (1600, 1200))
    assert diff.max() <= 3 and diff.mean() < 1.0


def test_drafting_keeps_twice_the_input_size(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []
    resize = decode_module._resize

    def spy(image: Image.Image, spec: InputSpec) -> Image.Image:
        seen.append(image.size)
        return resize(image, spec)

    monkeypatch.setattr(decode_module, "_resize", spy)
    data = _encode(_photo(1600, 1200), "JPEG")
    for size in ((48, 64), (100, 100), (300, 300), (1000, 1000)):
        decode_image(data, InputSpec(size=size, channels=3), max_pixels=10**7)
    wanted = [(200, 150), (400, 300), (800, 600), (1600, 1200)]  # 1/8, 1/4, 1/2, full
    assert seen == wanted
    for (width, height), (h, w) in zip(seen[:3], ((48, 64), (100, 100), (300, 300)), strict=True):
        assert width >= 2 * w and height >= 2 * h


def test_the_full_resolution_image_is_closed_once_prepared() -> None:
    image = open_image(_encode(_gradient(), "JPEG"), max_pixels=10_000)
    assert isinstance(image, Image.Image)
    prepare_image(image, RGB)
    with pytest.raises(ValueError, match="closed"):
        image.getpixel((0, 0))


@pytest.mark.parametrize(
    "error",
    [
        struct.error("unpack requires a buffer"),
        SyntaxError("bad"),
        KeyError(3),
        IndexError("i"),
        ZeroDivisionError("division by zero"),
        TypeError("x"),
        RuntimeError("y"),
        MemoryError(),
    ],
)
def test_any_exception_while_decoding_is_that_images_bad_image(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def fail(self: object) -> None:
        raise error

    opened = open_image(_encode(_gradient(), "JPEG"), max_pixels=10_000)
    monkeypatch.setattr(type(opened), "load", fail)
    plain = open_image(_encode(_gradient(), "PNG"), max_pixels=10_000)  # past Image.open
    monkeypatch.setattr(type(plain), "decode", fail)
    for image in (opened, plain):
        with pytest.raises(BadImage, match=type(error).__name__):
            prepare_image(image, RGB)


def test_messages_carry_no_object_reprs_or_addresses() -> None:
    assert describe(ValueError("cannot identify image file <_io.BytesIO object at 0x7f5f>")) == "ValueError"
    assert describe(OSError("x" * 500)) == "OSError"
    assert describe(struct.error("unpack requires a buffer of 4 bytes")) == (
        "error: unpack requires a buffer of 4 bytes"
    )


def test_a_mistyped_exif_tag_does_not_stop_the_orientation() -> None:
    """Pillow's exif_transpose re-serialises the EXIF and raises struct.error on this file."""
    data = crafted.bad_exif_jpeg()
    with pytest.raises(struct.error):
        ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    started = time.monotonic()
    decoded = decode_image(data, RGB, max_pixels=10_000)
    assert time.monotonic() - started < 0.5
    assert (decoded.width, decoded.height) == (20, 40)
    assert decoded.pixels[:, :, 0].float().mean() > 150  # the red image, upright
