"""Structural pre-scan of an upload before Pillow parses it: names the format, refuses crafted structure.

Pillow walks headers in Python, one marker, chunk or block per step, so a 20 MB body of millions
of empty segments keeps a core busy for seconds before any size check runs (measured with Pillow
13: 1 M empty JPEG APP5 segments 3.5 s in ``Image.open``, 1 M PNG ``prIv`` chunks 4 s, 8 MB of
1-pixel BMP RLE runs 3.1 s in ``load``), and libjpeg makes one pass over every coefficient block
per progressive scan (6000 scans of a 36 MP JPEG: 45 s). Each walk here touches every structural
unit once with ``bytes`` methods and stops at the first limit, so its cost is bounded by the
limits, not by the body. Only the documented formats are recognised: nothing else is ever opened.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np

from service.errors import BadImage

ACCEPTED = ("PNG", "JPEG", "WebP", "BMP", "GIF", "TIFF")

# JPEG. libjpeg's progressive script writes 10 scans (6 for grey, 18 for CMYK), mozjpeg's about
# as many. Each scan is a pass over every coefficient block: decode time is scans x pixels
# (measured here: a 9 MP file with 100 refinement scans 2.8 s, with 10 scans 0.17 s).
JPEG_MAX_SCANS = 100
# scans x pixels: 16 scans of a 40 MP image (the default pixel limit), the costliest legitimate
# upload; repeating scans in a smaller image may not cost more than that.
JPEG_MAX_SCAN_WORK = 16 * 40_000_000
# A camera or editor JPEG has 10-30 segments (APPn, DQT, DHT, SOF, SOS, COM); extended XMP in
# 64 KB pieces stays under 400 even at the 20 MB body limit. Pillow parses each in Python.
JPEG_MAX_SEGMENTS = 1000
# Fill bytes (0xFF) and junk between segments, which Pillow skips one byte per Python step.
JPEG_MAX_PADDING = 4096
# PNG. Encoders split the image data into IDAT chunks of 8 KB (libpng) to 1 MB, so 20 MB is at
# most a few thousand; 20 000 also leaves room for one IDAT per row or APNG fcTL/fdAT pairs.
PNG_MAX_CHUNKS = 20_000
# Metadata chunks (text, ICC, EXIF, private ones): real files carry a handful to a few dozen.
PNG_MAX_METADATA_CHUNKS = 1000
_PNG_IMAGE_DATA = frozenset((b"IDAT", b"fdAT", b"fcTL"))
# GIF. Extension sub-blocks before the first image (comments, XMP, NETSCAPE loop): an XMP packet
# walks as a few hundred; 10 000 is 2.5 MB of extension data.
GIF_MAX_EXTENSION_BLOCKS = 10_000
GIF_MAX_JUNK = 4096  # bytes between blocks, which Pillow skips one at a time
# TIFF: a baseline, GeoTIFF or DNG first directory has 10-200 tags (the format allows 65535).
TIFF_MAX_TAGS = 1000
# BMP: Pillow decodes RLE4/RLE8 in Python, about 0.4 us per byte; 256 KiB stays near 0.1 s.
BMP_MAX_RLE_BYTES = 256 * 1024

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_PREFIXES = (b"MM\x00\x2a", b"II\x2a\x00", b"MM\x00\x2b", b"II\x2b\x00")
_JPEG_STANDALONE = frozenset((0x01, *range(0xD0, 0xD8)))
_JPEG_FRAMES = frozenset((*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)))
_JPEG_PROGRESSIVE_FRAMES = frozenset((0xC2, 0xC6, 0xCA, 0xCE))


def scan(data: bytes) -> str:
    """The Pillow format id to open ``data`` with; ``BadImage`` for any other format or a crafted file."""
    kind = sniff(data)
    if kind is None:
        raise BadImage(
            f"the body is not an image in an accepted format ({', '.join(ACCEPTED)}); "
            "convert it to one of those"
        )
    _WALKS[kind](data)
    return kind


def sniff(data: bytes) -> str | None:
    """The format from the magic bytes alone (Pillow's ids), or None for anything not accepted."""
    if data.startswith(_PNG_SIGNATURE):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"  # Pillow's JPEG opener also returns MPO files (multi-picture JPEGs)
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith(b"BM"):
        return "BMP"
    if data.startswith(_TIFF_PREFIXES):
        return "TIFF"
    return None


def _refuse(message: str) -> BadImage:
    return BadImage(f"{message}; re-encode the image with a standard encoder")


def _walk_jpeg(data: bytes) -> None:
    """Walks the segments Pillow parses (up to the first scan), then bounds a progressive file's scans."""
    pos, end = 2, len(data)
    segments = padding = pixels = 0
    progressive = False
    while pos + 3 < end:
        if data[pos] != 0xFF or data[pos + 1] == 0xFF:
            padding += 1
            if padding > JPEG_MAX_PADDING:
                raise _refuse(f"the JPEG has more than {JPEG_MAX_PADDING} padding bytes between segments")
            pos += 1
            continue
        marker = data[pos + 1]
        segments += 1
        if segments > JPEG_MAX_SEGMENTS:
            raise _refuse(f"the JPEG has more than {JPEG_MAX_SEGMENTS} segments (markers) before its image")
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in _JPEG_FRAMES and pos + 9 <= end:
            height, width = struct.unpack_from(">HH", data, pos + 5)
            pixels = height * width
            progressive = marker in _JPEG_PROGRESSIVE_FRAMES
        if marker in (0xD9, 0xDA):  # EOI, or the first scan: libjpeg (C) reads on from here
            break
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    if progressive:
        _check_scans(1 + _count_pairs(data, pos + 2, 0xFFDA), pixels)


def _check_scans(scans: int, pixels: int) -> None:
    if scans > JPEG_MAX_SCANS:
        raise _refuse(
            f"the JPEG has {scans} scans (progressive passes); at most {JPEG_MAX_SCANS} are allowed"
        )
    if scans * pixels > JPEG_MAX_SCAN_WORK:
        allowed = max(1, JPEG_MAX_SCAN_WORK // max(pixels, 1))
        raise _refuse(
            f"the JPEG has {scans} scans (progressive passes); at most {allowed} are allowed "
            f"at {pixels} pixels"
        )


def _count_pairs(data: bytes, start: int, pair: int) -> int:
    """How often the byte pair ``pair`` occurs from ``start`` on; numpy's speed whatever the content.

    A second SOS marker cannot hide in entropy-coded data (0xFF there is followed by 0x00 or a
    restart marker), so this is an upper bound on the scans.
    """
    found = 0
    for offset in (start, start + 1):  # pairs at even and at odd positions
        count = (len(data) - offset) // 2
        if count > 0:
            found += int(np.count_nonzero(np.frombuffer(data, ">u2", count, offset) == pair))
    return found


def _walk_png(data: bytes) -> None:
    """Walks every chunk to IEND: counts them and refuses a chunk that runs past the body."""
    pos, end = len(_PNG_SIGNATURE), len(data)
    chunks = metadata = 0
    unpack = struct.Struct(">I4s").unpack_from
    while pos + 8 <= end:
        length, kind = unpack(data, pos)
        pos += 12 + length
        if kind == b"IEND":
            return
        if pos > end:
            raise BadImage(f"the PNG is truncated: its {kind.decode('latin-1')!r} chunk runs past the end")
        chunks += 1
        if chunks > PNG_MAX_CHUNKS:
            raise _refuse(f"the PNG has over {PNG_MAX_CHUNKS} chunks")
        if kind not in _PNG_IMAGE_DATA:
            metadata += 1
            if metadata > PNG_MAX_METADATA_CHUNKS:
                raise _refuse(f"the PNG has over {PNG_MAX_METADATA_CHUNKS} metadata (non-image) chunks")
    if chunks == 0:
        raise BadImage("the PNG is truncated: it has no chunks")


def _walk_gif(data: bytes) -> None:
    """Walks the blocks before the first image, the only ones Pillow reads for frame 0."""
    if len(data) < 13:
        raise BadImage("the GIF is truncated: its header is incomplete")
    flags = data[10]
    pos, end = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0), len(data)
    blocks = junk = 0
    while pos < end:
        introducer = data[pos]
        if introducer in (0x2C, 0x3B):  # image descriptor, trailer
            return
        if introducer != 0x21:
            junk += 1
            if junk > GIF_MAX_JUNK:
                raise _refuse(f"the GIF has over {GIF_MAX_JUNK} junk bytes between blocks")
            pos += 1
            continue
        pos += 2  # introducer and label
        while pos < end and data[pos]:
            blocks += 1
            if blocks > GIF_MAX_EXTENSION_BLOCKS:
                raise _refuse(f"the GIF has over {GIF_MAX_EXTENSION_BLOCKS} extension blocks before an image")
            pos += data[pos] + 1
        pos += 1


def _walk_tiff(data: bytes) -> None:
    """Reads the first directory's tag count (classic or BigTIFF); its tags are parsed in Python."""
    order = "<" if data.startswith(b"II") else ">"
    big = data[2:4] in (b"\x2b\x00", b"\x00\x2b")
    try:
        if big:
            (offset,) = struct.unpack_from(order + "Q", data, 8)
            (tags,) = struct.unpack_from(order + "Q", data, offset)
        else:
            (offset,) = struct.unpack_from(order + "I", data, 4)
            (tags,) = struct.unpack_from(order + "H", data, offset)
    except struct.error:
        raise BadImage("the TIFF is truncated: its first directory is missing") from None
    if tags > TIFF_MAX_TAGS:
        raise _refuse(f"the TIFF's first directory has {tags} tags; at most {TIFF_MAX_TAGS} are accepted")


def _walk_bmp(data: bytes) -> None:
    """Bounds RLE-compressed bodies (compression 1 or 2 in a BITMAPINFOHEADER or later)."""
    if len(data) < 34:
        return  # Pillow reports the short header
    header_size, compression = int.from_bytes(data[14:18], "little"), int.from_bytes(data[30:34], "little")
    if header_size >= 40 and compression in (1, 2) and len(data) > BMP_MAX_RLE_BYTES:
        raise _refuse(
            f"the BMP is run-length encoded and {len(data)} bytes; at most {BMP_MAX_RLE_BYTES} are "
            "accepted for RLE (send it uncompressed or as PNG)"
        )


def _walk_webp(data: bytes) -> None:
    """libwebp parses the container in C; only the RIFF size is checked here."""
    if int.from_bytes(data[4:8], "little") < 4:
        raise BadImage("the WebP is truncated: its RIFF header declares no content")


_WALKS: dict[str, Callable[[bytes], None]] = {
    "PNG": _walk_png,
    "JPEG": _walk_jpeg,
    "WEBP": _walk_webp,
    "GIF": _walk_gif,
    "BMP": _walk_bmp,
    "TIFF": _walk_tiff,
}
