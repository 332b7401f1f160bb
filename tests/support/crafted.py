"""Hostile and unusual image files, built in memory from real encoder output plus crafted structure."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Smooth noise: compresses like a photo, not like a flat colour."""
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, channels), dtype=np.uint8)
    image = Image.fromarray(coarse[:, :, 0] if channels == 1 else coarse).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return image.convert(mode)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def jpeg_segments(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every segment up to EOI, each scan including its entropy-coded data."""
    spans, pos = [], 2
    while data[pos + 1] != 0xD9:
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if data[pos + 1] == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        spans.append((pos, end))
        pos = end
    return spans


def scan_bomb(width: int, height: int, scans: int) -> bytes:
    """A valid progressive JPEG whose last AC scan is repeated until it has ``scans`` scans.

    libjpeg only warns about a repeated progression and decodes every copy: one pass over all
    coefficient blocks per scan, for a few bytes of body each (the issue's 45 s file had 6000).
    """
    data = encode(Image.new("RGB", (width, height), (120, 130, 140)), "JPEG", progressive=True)
    spans = jpeg_segments(data)
    last_scan = max(i for i, (start, _) in enumerate(spans) if data[start + 1] == 0xDA)
    start, end = spans[last_scan]
    have = sum(1 for s, _ in spans if data[s + 1] == 0xDA)
    return data[:end] + data[start:end] * (scans - have) + data[end:]


def marker_bomb(count: int) -> bytes:
    """A tiny JPEG with ``count`` empty APP5 segments after SOI (4 bytes each)."""
    data = encode(Image.new("RGB", (8, 8)), "JPEG")
    return data[:2] + b"\xff\xe5\x00\x02" * count + data[2:]


def chunk_bomb(count: int, *, before_pixels: bool = True) -> bytes:
    """A tiny PNG with ``count`` empty private ``prIv`` chunks before (or after) its IDAT."""
    data = encode(Image.new("L", (8, 8)), "PNG")
    where = data.index(b"IDAT") - 4 if before_pixels else data.index(b"IEND") - 4
    return data[:where] + png_chunk(b"prIv", b"") * count + data[where:]


def hand_png(width: int, height: int, depth: int, colour: int, image_data: bytes) -> bytes:
    """A PNG written by hand: IHDR (not interlaced), one IDAT of ``image_data``, IEND."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", image_data)
        + png_chunk(b"IEND", b"")
    )


def png_16bit_grey(values: np.ndarray) -> bytes:
    """A 16-bit greyscale PNG (big-endian samples, filter 0 per row)."""
    height, width = values.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in values)
    return hand_png(width, height, 16, 0, zlib.compress(rows))


def png_16bit_rgb(values: np.ndarray) -> bytes:
    """A 48-bit RGB PNG from uint16 [H, W, 3] values."""
    height, width, _ = values.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in values)
    return hand_png(width, height, 16, 2, zlib.compress(rows))


def exif(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A little-endian EXIF block: IFD0 with (tag, type, count, 4-byte value) entries, sorted."""
    body = b"".join(struct.pack("<HHI", tag, kind, n) + value for tag, kind, n, value in sorted(entries))
    return b"Exif\x00\x00II*\x00" + struct.pack("<IH", 8, len(entries)) + body + b"\0\0\0\0"


def bad_exif_jpeg() -> bytes:
    """Orientation 6 beside an ImageWidth typed BYTE: ``ImageOps.exif_transpose`` raises struct.error."""
    block = exif([(0x0112, 3, 1, b"\x06\0\0\0"), (0x0100, 1, 1, b"\x06\0\0\0")])
    return encode(Image.new("RGB", (40, 20), (200, 10, 10)), "JPEG", exif=block)


def spider() -> bytes:
    """A SPIDER file (a format Pillow knows but this server does not accept)."""
    return encode(Image.new("F", (16, 16), 1.0), "SPIDER")


EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
    b"newpath 0 0 moveto 16 16 lineto stroke showpage\n%%EOF\n"
)


def rle8_bmp(width: int, height: int) -> bytes:
    """An 8-bit RLE BMP of 1-pixel runs (the costliest RLE for Pillow's Python decoder)."""
    rows = b"".join(b"\x01\x07" * width + b"\x00\x00" for _ in range(height)) + b"\x00\x01"
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    offset = 14 + 40 + len(palette)
    file_header = struct.pack("<2sIHHI", b"BM", offset + len(rows), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(rows), 0, 0, 256, 0)
    return file_header + info + palette + rows


def tiff_with_tags(extra: int) -> bytes:
    """A valid 8x8 greyscale TIFF whose first directory has ``extra`` private tags besides its own."""
    own = [(256, 3, 8), (257, 3, 8), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8), (277, 3, 1)]
    own += [(278, 3, 8), (279, 4, 64)]
    tags = sorted(own + [(40000 + i, 3, 0) for i in range(extra)])
    entries = b"".join(struct.pack("<HHII", tag, kind, 1, value) for tag, kind, value in tags)
    return b"II*\x00" + struct.pack("<I", 72) + bytes(64) + struct.pack("<H", len(tags)) + entries + bytes(4)
