"""Crafted uploads that once cost seconds, started programs or failed a batch: each is refused
(400 ``bad_image``) or decoded correctly, and quickly."""

from __future__ import annotations

import contextlib
import io
import subprocess
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.config import InputSpec
from service.errors import BadImage
from service.images import prescan
from service.images.decode import decode_image
from tests.support import crafted

RGB = InputSpec(size=(8, 12), channels=3)
FAST_S = 0.5  # each refusal is a sub-millisecond walk; each decode here is a small image
MAX_PIXELS = 50_000_000


def _timed(call: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    try:
        return call()
    finally:
        assert time.perf_counter() - started < FAST_S


def _refused(data: bytes, match: str) -> None:
    with pytest.raises(BadImage, match=match) as refusal:
        _timed(lambda: decode_image(data, RGB, max_pixels=MAX_PIXELS))
    assert refusal.value.status == 400 and refusal.value.code == "bad_image"
    assert "0x" not in refusal.value.message


def _decodes(data: bytes) -> None:
    decoded = _timed(lambda: decode_image(data, RGB, max_pixels=MAX_PIXELS))
    assert decoded.pixels.shape == (8, 12, 3)


@pytest.fixture
def no_programs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fails on any child process or any Image.open; returns what was attempted."""
    attempts: list[str] = []

    def forbid(name: str) -> Callable[..., Any]:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            attempts.append(name)
            raise AssertionError(f"{name} was called")

        return refuse

    monkeypatch.setattr(subprocess, "Popen", forbid("subprocess.Popen"))
    monkeypatch.setattr(Image, "open", forbid("Image.open"))
    return attempts


def test_an_eps_body_is_refused_before_pillow_and_starts_no_program(no_programs: list[str]) -> None:
    """Pillow would run Ghostscript for EPS; the body never reaches Image.open."""
    _refused(crafted.EPS, r"accepted format \(PNG, JPEG, WebP, BMP, GIF, TIFF\)")
    _refused(b"\xc5\xd0\xd3\xc6" + bytes(60), "accepted format")  # DOS EPS binary header
    assert no_programs == []


@pytest.mark.parametrize("fmt", ["PCX", "TGA", "PPM", "ICO", "JPEG2000", "SPIDER", "PDF", "DDS"])
def test_formats_pillow_knows_but_the_server_does_not_accept_are_refused(
    fmt: str, no_programs: list[str]
) -> None:
    image = Image.new("F" if fmt == "SPIDER" else "RGB", (16, 16))
    _refused(crafted.encode(image, fmt), "accepted format")
    assert no_programs == []


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_every_documented_format_opens_only_as_itself(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    real_open = Image.open

    def spy(fp: Any, formats: Any = None) -> Image.Image:
        calls.append(formats)
        return real_open(fp, formats=formats)

    monkeypatch.setattr(Image, "open", spy)
    image = crafted.noise(40, 30)
    _decodes(crafted.encode(image.convert("P") if fmt == "PNG" else image, fmt))  # P: not plain
    assert calls == [[fmt]]


def test_an_mpo_opens_through_the_jpeg_opener() -> None:
    frames = [crafted.noise(40, 30, seed=s) for s in (1, 2)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="MPO", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(buffer.getvalue())).format == "MPO"
    _decodes(buffer.getvalue())


def test_a_progressive_scan_bomb_is_refused() -> None:
    _refused(crafted.scan_bomb(64, 64, 150), "150 scans .*at most 100 are allowed")


def test_repeated_scans_are_bounded_by_the_pixels_they_cost() -> None:
    """9 M pixels x 72 scans is more than 16 scans of the largest image: refused; 70 are fine."""
    _refused(crafted.scan_bomb(3000, 3000, 72), "72 scans .*at most 71 are allowed at 9000000 pixels")
    prescan.scan(crafted.scan_bomb(3000, 3000, 70))


def test_an_ordinary_progressive_jpeg_decodes() -> None:
    data = crafted.encode(crafted.noise(400, 300), "JPEG", progressive=True)
    assert 2 <= data.count(b"\xff\xda") <= 12
    _decodes(data)


def test_millions_of_empty_jpeg_segments_are_refused_at_once() -> None:
    """The 20 MB APP5 body kept Image.open busy for seconds."""
    _refused(crafted.marker_bomb(5_000_000), "more than 1000 segments")
    _decodes(crafted.marker_bomb(900))


def test_jpeg_padding_bytes_are_bounded() -> None:
    data = crafted.encode(crafted.noise(16, 16), "JPEG")
    _refused(data[:2] + b"\xff" * 5_000_000 + data[2:], "padding bytes")
    _decodes(data[:2] + b"\xff" * 100 + data[2:])


@pytest.mark.parametrize("before_pixels", [True, False])
def test_millions_of_private_png_chunks_are_refused(before_pixels: bool) -> None:
    _refused(crafted.chunk_bomb(1_600_000, before_pixels=before_pixels), "over 1000 metadata")
    _decodes(crafted.chunk_bomb(500, before_pixels=before_pixels))


def test_many_idat_chunks_are_normal() -> None:
    """Encoders split pixels into many IDATs: 5000 of them decode to the same pixels as one."""
    data = crafted.encode(crafted.noise(100, 60), "PNG")
    start = data.index(b"IDAT") - 4
    length = int.from_bytes(data[start : start + 4], "big")
    pixels = data[start + 8 : start + 8 + length]
    pieces = [pixels[i : i + 1] for i in range(len(pixels))] + [b""] * (5000 - len(pixels))
    split = (
        data[:start] + b"".join(crafted.png_chunk(b"IDAT", p) for p in pieces) + data[start + 12 + length :]
    )
    once = decode_image(data, RGB, max_pixels=MAX_PIXELS)
    assert np.array_equal(_timed(lambda: decode_image(split, RGB, max_pixels=MAX_PIXELS)).pixels, once.pixels)
    _refused(data[:start] + crafted.png_chunk(b"IDAT", b"") * 25_000 + data[start:], "over 20000 chunks")


def test_a_png_chunk_running_past_the_end_is_truncated() -> None:
    data = crafted.encode(crafted.noise(100, 60), "PNG")
    _refused(data[: len(data) // 2], "truncated")


def test_a_gif_with_endless_extension_blocks_is_refused() -> None:
    data = crafted.encode(Image.new("L", (8, 8)), "GIF")
    image_at = data.index(b",")
    bomb = data[:image_at] + b"!\xfe" + b"\x01a" * 2_000_000 + b"\x00" + data[image_at:]
    _refused(bomb, "over 10000 extension blocks")
    _refused(data[:image_at] + bytes(100_000) + data[image_at:], "junk bytes")
    _decodes(crafted.encode(Image.new("L", (8, 8)), "GIF", comment=b"a comment" * 100))


def test_a_tiff_with_thousands_of_tags_is_refused() -> None:
    _refused(crafted.tiff_with_tags(5000), "5009 tags; at most 1000")
    _decodes(crafted.tiff_with_tags(10))


def test_large_rle_bmps_are_refused_small_ones_decode() -> None:
    """Pillow decodes BMP run-length data in Python: 8 MB of 1-pixel runs took 3 s."""
    _refused(crafted.rle8_bmp(2000, 2000), "run-length encoded")
    _decodes(crafted.rle8_bmp(200, 200))


def test_a_spider_file_is_a_400_not_a_500() -> None:
    _refused(crafted.spider(), "accepted format")


def test_pre_scanning_large_bodies_costs_milliseconds() -> None:
    """The walk is bounded by its limits, and a normal 20 MB progressive JPEG is read at C speed."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (2900, 2900, 3), dtype=np.uint8))
    bodies = [
        crafted.marker_bomb(5_000_000),
        crafted.chunk_bomb(1_600_000),
        crafted.encode(noise, "JPEG", quality=100, progressive=True),
        crafted.encode(noise, "PNG", compress_level=0),
    ]
    for body in bodies:
        assert len(body) > 10_000_000
        started = time.perf_counter()
        with contextlib.suppress(BadImage):
            prescan.scan(body)
        assert time.perf_counter() - started < 0.05
