"""The v2 tensor codec: every wire form becomes one checked tensor, and outputs go back out."""

from __future__ import annotations

import base64
import struct

import numpy as np
import pytest

from service.doors.v2.tensors import (
    OutputTensor,
    from_contents,
    from_json_data,
    from_raw,
    parse_shape,
    split_bytes,
    to_json_data,
    to_raw,
)
from service.errors import BadRequest


def _bytes_section(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def test_binary_bytes_split_and_join_round_trip() -> None:
    elements = [b"\x89PNG\r\n\x1a\n", b"", b"x" * 300, bytes(range(256))]
    raw = _bytes_section(*elements)
    assert split_bytes("image", raw) == elements
    values = np.empty(len(elements), dtype=object)
    values[:] = elements
    assert to_raw(OutputTensor("s", "BYTES", values)) == raw
    tensor = from_raw("image", "BYTES", (4,), memoryview(raw))
    assert tensor.values == elements


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"\x05\x00", "inside an element's length"),  # 2 of the 4 length bytes
        (struct.pack("<I", 10) + b"abc", "runs past"),  # 10 bytes promised, 3 given
        (_bytes_section(b"ok") + b"\x01", "inside an element's length"),  # a stray trailing byte
    ],
)
def test_truncated_binary_bytes_are_refused(raw: bytes, needle: str) -> None:
    with pytest.raises(BadRequest, match=needle):
        split_bytes("image", raw)


def test_binary_bytes_count_must_match_the_shape() -> None:
    with pytest.raises(BadRequest, match=r"needs 2 elements, the binary data hold 1"):
        from_raw("image", "BYTES", (2,), _bytes_section(b"one"))


def test_fp32_raw_round_trip_is_little_endian_row_major() -> None:
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    raw = array.astype("<f4").tobytes()
    tensor = from_raw("input", "FP32", (2, 3, 4), raw)
    assert isinstance(tensor.values, np.ndarray)
    np.testing.assert_array_equal(tensor.values, array)
    assert to_raw(OutputTensor("p", "FP32", array)) == raw
    assert to_raw(OutputTensor("i", "INT64", np.array([1, 258]))) == struct.pack("<qq", 1, 258)
    assert to_raw(OutputTensor("m", "UINT8", np.array([[0, 3]], dtype=np.uint8))) == b"\x00\x03"


def test_fp32_raw_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(BadRequest, match=r"needs 96 bytes, got 92"):
        from_raw("input", "FP32", (2, 3, 4), bytes(92))


def test_json_data_flat_and_nested_give_the_same_tensor() -> None:
    flat = from_json_data("input", "FP32", (2, 2), [1.0, 2.5, -3, 4])
    nested = from_json_data("input", "FP32", (2, 2), [[1.0, 2.5], [-3, 4]])
    assert isinstance(flat.values, np.ndarray) and isinstance(nested.values, np.ndarray)
    np.testing.assert_array_equal(flat.values, [[1.0, 2.5], [-3.0, 4.0]])
    np.testing.assert_array_equal(flat.values, nested.values)
    assert flat.values.dtype == np.float32
    # nesting need not follow the shape: only the row-major order of the elements counts
    odd = from_json_data("input", "FP32", (2, 2), [[1.0], [2.5, [-3, [4]]]])
    assert isinstance(odd.values, np.ndarray)
    np.testing.assert_array_equal(odd.values, flat.values)


def test_json_bytes_are_base64_of_the_file() -> None:
    files = [b"\x89PNG\x00\xff", b"GIF89a"]
    tensor = from_json_data("image", "BYTES", (2,), [base64.b64encode(f).decode() for f in files])
    assert tensor.values == files


@pytest.mark.parametrize("bad", ["not base64!", "abc", 17, None])
def test_json_bytes_that_are_not_base64_strings_are_refused(bad: object) -> None:
    with pytest.raises(BadRequest, match="base64"):
        from_json_data("image", "BYTES", (1,), [bad])


@pytest.mark.parametrize(
    ("shape", "data"),
    [((3,), [1.0, 2.0]), ((1, 2), [[1.0, 2.0], [3.0]]), ((0,), [1.0]), ((2, 2), [])],
)
def test_json_element_count_must_match_the_shape(shape: tuple[int, ...], data: list[object]) -> None:
    with pytest.raises(BadRequest, match="elements, got"):
        from_json_data("input", "FP32", shape, data)


@pytest.mark.parametrize("data", [[True, 1.0], [1.0, "2"], [1.0, None], [1.0, {"x": 1}]])
def test_json_numbers_only_and_bools_are_not_numbers(data: list[object]) -> None:
    with pytest.raises(BadRequest, match="must be numbers"):
        from_json_data("input", "FP32", (2,), data)


def test_json_numbers_out_of_range_are_refused() -> None:
    with pytest.raises(BadRequest, match="not UINT8 numbers"):
        from_json_data("x", "UINT8", (1,), [1000])


def test_json_data_must_be_a_list() -> None:
    with pytest.raises(BadRequest, match="must be a list"):
        from_json_data("input", "FP32", (1,), 1.0)


def test_unknown_datatype_is_refused() -> None:
    with pytest.raises(BadRequest, match="unknown datatype 'FLOAT'"):
        from_json_data("input", "FLOAT", (1,), [1.0])
    with pytest.raises(BadRequest, match="unknown datatype"):
        from_raw("input", "FP8", (1,), b"\x00")


@pytest.mark.parametrize("shape", [[1, True], [1.5], "1", None, [-1, 3]])
def test_shapes_must_be_non_negative_integers(shape: object) -> None:
    with pytest.raises(BadRequest, match="shape"):
        parse_shape("input", shape)


def test_shape_parses_to_a_tuple() -> None:
    assert parse_shape("input", [2, 1, 32, 32]) == (2, 1, 32, 32)
    assert parse_shape("input", []) == ()


def test_typed_contents_are_counted_against_the_shape() -> None:
    tensor = from_contents("input", "FP32", (1, 2), [0.5, 1.5])
    assert isinstance(tensor.values, np.ndarray)
    np.testing.assert_array_equal(tensor.values, [[0.5, 1.5]])
    assert from_contents("image", "BYTES", (1,), [b"abc"]).values == [b"abc"]
    with pytest.raises(BadRequest, match="needs 4 elements, got 2"):
        from_contents("input", "FP32", (2, 2), [0.5, 1.5])


def test_json_outputs_are_flat_and_bytes_are_text() -> None:
    strings = np.empty((1, 2), dtype=object)
    strings[:] = [[b"0.9:7:7", b"0.1:1:1"]]
    assert to_json_data(OutputTensor("p", "BYTES", strings)) == ["0.9:7:7", "0.1:1:1"]
    mask = np.array([[[0, 1], [2, 3]]], dtype=np.uint8)
    assert to_json_data(OutputTensor("mask", "UINT8", mask)) == [0, 1, 2, 3]
    assert OutputTensor("mask", "UINT8", mask).shape == [1, 2, 2]


def test_bool_data_are_true_or_false_only() -> None:
    tensor = from_json_data("flags", "BOOL", (2,), [True, False])
    assert isinstance(tensor.values, np.ndarray)
    assert tensor.values.tolist() == [True, False]
    with pytest.raises(BadRequest, match="true or false"):
        from_json_data("flags", "BOOL", (2,), [1, 0])
