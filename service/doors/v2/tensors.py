"""Open Inference Protocol (v2) tensors as both doors carry them, checked before any work.

A tensor arrives as JSON ``data`` (flat or nested), as a binary section (the binary tensor data
extension over REST, ``raw_input_contents`` over gRPC: little-endian, row-major, ``BYTES``
elements each a 4-byte little-endian length then the bytes), or as gRPC typed ``contents``.
Every form becomes one ``InputTensor`` whose element count agrees with its shape.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from service.errors import BadRequest

# v2 datatype -> little-endian numpy dtype (BYTES are Python bytes in an object array)
NUMPY_TYPES: dict[str, str] = {
    "BOOL": "?",
    "UINT8": "u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


@dataclass(frozen=True, slots=True)
class InputTensor:
    """One request input: ``values`` is an array of ``shape`` (numeric) or a list of bytes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray | list[bytes]


@dataclass(frozen=True, slots=True)
class OutputTensor:
    """One answer output: ``values`` is a numeric array, or an object array of bytes (BYTES)."""

    name: str
    datatype: str
    values: np.ndarray

    @property
    def shape(self) -> list[int]:
        return list(self.values.shape)


_MAX_ELEMENTS = 1 << 40  # far above any body limit, far below numpy's own
_MAX_RANK = 32  # numpy's (64 in numpy 2); no image model takes more than 5


def parse_shape(name: str, raw: Any) -> tuple[int, ...]:
    """A shape as non-negative integers (``-1`` is for metadata, never for data)."""
    if not isinstance(raw, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in raw
    ):
        raise BadRequest(f"input {name!r}: 'shape' must be a list of integers")
    if any(d < 0 for d in raw):
        raise BadRequest(f"input {name!r}: shape {list(raw)} has a negative dimension")
    # numpy sizes an array by its non-zero dimensions even when one is 0: [0, 2^40, 2^40]
    # holds no element yet cannot be made, so no shape may exceed what any body could hold
    if math.prod(d or 1 for d in raw) > _MAX_ELEMENTS or len(raw) > _MAX_RANK:
        raise BadRequest(f"input {name!r}: shape {list(raw)} is larger than any tensor the server accepts")
    return tuple(raw)


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def from_json_data(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> InputTensor:
    """``data`` flat or nested; ``BYTES`` elements are base64 strings of the bytes."""
    flat = _flatten(name, data)
    if len(flat) != element_count(shape):
        raise BadRequest(
            f"input {name!r}: shape {list(shape)} needs {element_count(shape)} elements, got {len(flat)}"
        )
    if datatype == "BYTES":
        return InputTensor(name, datatype, shape, [_base64(name, value) for value in flat])
    kinds = set(map(type, flat))  # JSON's exact types, found without a Python loop per element
    if datatype == "BOOL":
        if not kinds <= {bool}:
            raise BadRequest(f"input {name!r}: BOOL data must be true or false")
    elif not kinds <= {int, float}:
        # a JSON true is no number: numpy would take it as 1 and answer for a wrong input
        raise BadRequest(f"input {name!r}: {datatype} data must be numbers")
    try:
        values = np.asarray(flat, dtype=_numpy_type(name, datatype)).reshape(shape)
    except (TypeError, ValueError, OverflowError):
        raise BadRequest(f"input {name!r}: the data are not {datatype} numbers") from None
    return InputTensor(name, datatype, shape, values)


def from_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes | memoryview) -> InputTensor:
    """A binary section: little-endian row-major numbers, or length-prefixed ``BYTES``."""
    if datatype == "BYTES":
        elements = split_bytes(name, raw)
        if len(elements) != element_count(shape):
            raise BadRequest(
                f"input {name!r}: shape {list(shape)} needs {element_count(shape)} elements, "
                f"the binary data hold {len(elements)}"
            )
        return InputTensor(name, datatype, shape, elements)
    dtype = np.dtype(_numpy_type(name, datatype))
    expected = element_count(shape) * dtype.itemsize
    if len(raw) != expected:
        raise BadRequest(
            f"input {name!r}: shape {list(shape)} of {datatype} needs {expected} bytes, got {len(raw)}"
        )
    return InputTensor(name, datatype, shape, np.frombuffer(raw, dtype=dtype).reshape(shape))


def from_contents(name: str, datatype: str, shape: tuple[int, ...], values: Sequence[Any]) -> InputTensor:
    """gRPC typed ``contents`` (already typed by protobuf: only the count is checked)."""
    if len(values) != element_count(shape):
        raise BadRequest(
            f"input {name!r}: shape {list(shape)} needs {element_count(shape)} elements, got {len(values)}"
        )
    if datatype == "BYTES":
        return InputTensor(name, datatype, shape, list(values))
    return InputTensor(
        name, datatype, shape, np.asarray(values, dtype=_numpy_type(name, datatype)).reshape(shape)
    )


def split_bytes(name: str, raw: bytes | memoryview) -> list[bytes]:
    """``BYTES`` elements of a binary section: each a 4-byte little-endian length, then bytes."""
    view = memoryview(raw)
    elements, offset = [], 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise BadRequest(f"input {name!r}: the binary BYTES data end inside an element's length")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise BadRequest(f"input {name!r}: a BYTES element of {length} bytes runs past the binary data")
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    return elements


def to_raw(tensor: OutputTensor) -> bytes:
    """An output as a binary section (the same layout as inputs)."""
    if tensor.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(item)) + item for item in tensor.values.ravel())
    return np.ascontiguousarray(tensor.values, dtype=NUMPY_TYPES[tensor.datatype]).tobytes()


def to_json_data(tensor: OutputTensor) -> list[Any]:
    """An output's flat JSON ``data``; ``BYTES`` elements as text (they are ASCII here)."""
    if tensor.datatype == "BYTES":
        return [item.decode("utf-8", "replace") for item in tensor.values.ravel()]
    flat: list[Any] = tensor.values.ravel().tolist()
    return flat


def _flatten(name: str, data: Any) -> list[Any]:
    """``data``'s elements in row-major order. A regular nesting (each level all lists or all
    values, as a tensor's is) is flattened a level at a time by C loops; only an irregular one
    takes a Python step per element (it runs on a worker thread, but holds the GIL)."""
    if not isinstance(data, list):
        raise BadRequest(f"input {name!r}: 'data' must be a list (flat or nested)")
    level: list[Any] = data
    while True:
        kinds = set(map(type, level))
        if list not in kinds:
            return level
        if kinds != {list}:
            break
        level = list(chain.from_iterable(level))
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _base64(name: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise BadRequest(f"input {name!r}: BYTES elements in JSON must be base64 strings")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(
            f"input {name!r}: a BYTES element is not valid base64 (in JSON each file is base64-encoded; "
            "or send it raw with the binary tensor data extension)"
        ) from None


def _numpy_type(name: str, datatype: str) -> str:
    numpy_type = NUMPY_TYPES.get(datatype)
    if numpy_type is None:
        raise BadRequest(f"input {name!r}: unknown datatype {datatype!r}")
    return numpy_type
