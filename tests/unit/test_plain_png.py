"""Plain PNGs skip Pillow's chunk reader: the same pixels as ``Image.open``, and every PNG that
is not plain (or not sound) still goes the long way."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from service.config import InputSpec
from service.errors import BadImage
from service.images import decode as decode_module
from service.images.decode import decode_image, open_image
from service.images.plain_png import PlainPng, grey_png, plain_png
from tests.support import crafted


def _png(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def _pillow(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert(image.mode))


def _chunks(data: bytes) -> list[bytes]:
    kinds, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        kinds.append(kind)
        pos += 12 + length
    return kinds


def _text(**entries: str) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, value in entries.items():
        info.add_text(key, value)
    return info


PLAIN = {
    "grey": _png(crafted.noise(33, 17, "L")),
    "grey+alpha": _png(crafted.noise(20, 9, "LA")),
    "rgb": _png(crafted.noise(40, 30)),
    "rgba": _png(crafted.noise(31, 7, "RGBA")),
    "text and dpi": _png(crafted.noise(12, 12), pnginfo=_text(Author="me"), dpi=(300, 300)),
    "many IDAT chunks": _png(crafted.noise(400, 300)),  # Pillow writes 64 KiB IDATs
}


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_a_plain_png_decodes_to_pillows_own_pixels(name: str) -> None:
    data = PLAIN[name]
    plain = plain_png(data)
    assert plain is not None, name
    assert plain.size == Image.open(io.BytesIO(data)).size
    assert np.array_equal(np.asarray(plain.decode()), _pillow(data))
    if name == "many IDAT chunks":
        assert _chunks(data).count(b"IDAT") > 1


@pytest.mark.parametrize("channels", [1, 3])
def test_served_pixels_are_the_same_either_way(channels: int, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = InputSpec(size=(16, 24), channels=channels)
    for data in PLAIN.values():
        fast = decode_image(data, spec, max_pixels=10**6)
        monkeypatch.setattr(decode_module, "plain_png", lambda data: None)
        slow = decode_image(data, spec, max_pixels=10**6)
        monkeypatch.undo()
        assert (fast.width, fast.height) == (slow.width, slow.height)
        assert np.array_equal(fast.pixels.numpy(), slow.pixels.numpy())


def _exif_png() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _png(crafted.noise(10, 8), exif=exif.tobytes())


NOT_PLAIN = {
    "palette": lambda: _png(crafted.noise(10, 8).convert("P")),
    "transparency": lambda: _png(crafted.noise(10, 8), transparency=(1, 2, 3)),
    "exif (orientation)": _exif_png,
    "16-bit": lambda: crafted.png_16bit_grey(np.arange(80, dtype=np.uint16).reshape(8, 10) * 800),
    "bilevel": lambda: _png(crafted.noise(10, 8).convert("1")),
    "not a png": lambda: b"GIF89a" + bytes(40),
}


@pytest.mark.parametrize("name", sorted(NOT_PLAIN))
def test_other_pngs_go_through_pillow(name: str) -> None:
    assert plain_png(NOT_PLAIN[name]()) is None


def test_an_exif_orientation_is_still_applied() -> None:
    decoded = decode_image(_exif_png(), InputSpec(size=(4, 4), channels=3), max_pixels=10**6)
    assert (decoded.width, decoded.height) == (8, 10)  # turned a quarter: 10x8 stored


def _with_bad_crc(data: bytes, kind: bytes) -> bytes:
    pos = 8
    while True:
        length, found = struct.unpack_from(">I4s", data, pos)
        if found == kind:
            crc_at = pos + 8 + length
            return data[:crc_at] + bytes(b ^ 0xFF for b in data[crc_at : crc_at + 4]) + data[crc_at + 4 :]
        pos += 12 + length


def _outcome(data: bytes, monkeypatch: pytest.MonkeyPatch, *, plain: bool) -> object:
    """The decoded pixels, or the error's type, with the plain path on or off."""
    if not plain:
        monkeypatch.setattr(decode_module, "plain_png", lambda data: None)
    try:
        return decode_image(data, InputSpec(size=(4, 4), channels=3), max_pixels=10**6).pixels.tolist()
    except BadImage:
        return BadImage
    finally:
        monkeypatch.undo()


ROW = b"\x00" + bytes(range(60))  # one filter byte and 20 RGB pixels
BROKEN = {
    "bad IHDR checksum": lambda: _with_bad_crc(PLAIN["rgb"], b"IHDR"),
    "bad IDAT checksum": lambda: _with_bad_crc(PLAIN["rgb"], b"IDAT"),  # Pillow does not check it
    "cut image data": lambda: crafted.hand_png(20, 10, 8, 2, zlib.compress(ROW * 10)[:-6]),
    "one row of ten, complete": lambda: crafted.hand_png(20, 10, 8, 2, zlib.compress(ROW)),
    "more rows than the height": lambda: crafted.hand_png(20, 10, 8, 2, zlib.compress(ROW * 12)),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_unsound_pngs_are_answered_as_pillow_answers_them(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = BROKEN[name]()
    assert _outcome(data, monkeypatch, plain=True) == _outcome(data, monkeypatch, plain=False)
    if name == "cut image data":
        assert isinstance(open_image(data, max_pixels=10**6), PlainPng)
        assert _outcome(data, monkeypatch, plain=True) is BadImage
    if name == "bad IHDR checksum":
        assert plain_png(data) is None and _outcome(data, monkeypatch, plain=True) is BadImage


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (256, 256)])
def test_grey_png_reads_back_as_its_pixels_in_pillow_and_on_the_plain_path(shape: tuple[int, int]) -> None:
    pixels = np.random.default_rng(shape[1]).integers(0, 256, shape, dtype=np.uint8)
    pixels[: shape[0] // 2] = 3  # runs, as a mask has
    encoded = grey_png(pixels)
    with Image.open(io.BytesIO(encoded)) as image:
        image.load()
        assert (image.mode, image.size) == ("L", (shape[1], shape[0]))
        assert np.array_equal(np.asarray(image), pixels)
    plain = plain_png(encoded)
    assert plain is not None, "every CRC and the layout of a plain PNG"
    assert np.array_equal(np.asarray(plain.decode()), pixels)
