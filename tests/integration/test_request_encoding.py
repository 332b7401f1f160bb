"""Compressed request bodies (``Content-Encoding: gzip`` / ``deflate``) on v2 infer and
``/predict``, against the demo server: tritonclient's own compression answers exactly as the
uncompressed request does, and a zip bomb is refused by its inflated size without the server's
memory following it.
"""

from __future__ import annotations

import gzip
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http

from tests.support.memory import memory_mb
from tests.support.serving import ServerProcess

MIB = 1 << 20
PNG = {"Content-Type": "image/png"}


def zip_bomb(inflated_mib: int) -> bytes:
    """A gzip stream of ``inflated_mib`` MiB of zeros, about a thousandth of that in size,
    built from one compressed block repeated (each full flush resets the compressor, so every
    next MiB compresses to the same bytes). Its trailer's CRC is left zero: a server reading
    this far would have inflated everything already."""
    zero = bytes(MIB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    head = compressor.compress(zero) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(zero) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.flush()[:-8]
    return head + block * (inflated_mib - 1) + end + struct.pack("<II", 0, (inflated_mib * MIB) & 0xFFFFFFFF)


@pytest.fixture(scope="module")
def http_client(demo_server: ServerProcess) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(demo_server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.mark.parametrize(("name", "binary"), [("input", False), ("input", True), ("image", True)])
def test_tritonclient_compressed_requests_answer_as_uncompressed_ones(
    http_client: triton_http.InferenceServerClient, samples_dir: Path, name: str, binary: bool
) -> None:
    """JSON, and JSON plus binary sections (whose header length is of the inflated body)."""
    if name == "image":
        value = np.array([(samples_dir / f).read_bytes() for f in ("digit_3.png", "digit_7.png")], object)
    else:
        value = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    given = triton_http.InferInput(name, list(value.shape), "BYTES" if name == "image" else "FP32")
    given.set_data_from_numpy(value, binary_data=binary)
    answers = {
        algorithm: http_client.infer("digits", [given], request_compression_algorithm=algorithm)
        for algorithm in (None, "gzip", "deflate")
    }
    plain = answers.pop(None).as_numpy("probabilities")
    assert plain is not None and plain.shape == (2, 10)
    for algorithm, answer in answers.items():
        np.testing.assert_array_equal(answer.as_numpy("probabilities"), plain, err_msg=algorithm)


def test_predict_takes_a_gzip_upload(demo_server: ServerProcess, samples_dir: Path) -> None:
    image = (samples_dir / "digit_7.png").read_bytes()
    plain = httpx.post(f"{demo_server.url}/predict", content=image, headers=PNG)
    gzipped = {**PNG, "Content-Encoding": "gzip"}
    packed = httpx.post(f"{demo_server.url}/predict", content=gzip.compress(image), headers=gzipped)
    assert plain.status_code == packed.status_code == 200, packed.text
    assert packed.json()["predictions"] == plain.json()["predictions"]
    assert packed.json()["predictions"][0]["label"] == "7"


def test_a_zip_bomb_is_413_quickly_and_memory_stays_bounded(demo_server: ServerProcess) -> None:
    bomb = zip_bomb(10 * 1024)  # 10 GiB of zeros in about 10 MB: under the 20 MiB body limit
    assert len(bomb) < 12 * MIB
    pid = demo_server.process.pid
    before = memory_mb(pid) * MIB
    for path, content_type in (("/v2/models/digits/infer", "application/json"), ("/predict", "image/png")):
        headers = {"Content-Encoding": "gzip", "Content-Type": content_type}
        started = time.monotonic()
        answer = httpx.post(demo_server.url + path, content=bomb, headers=headers, timeout=30)
        assert answer.status_code == 413, answer.text
        assert "inflates past the limit" in answer.text
        assert time.monotonic() - started < 10, "refused one step past the limit, not after inflating it all"
    # the limit (20 MiB) and the bomb itself (10 MB) at most, with room for allocator slack
    assert memory_mb(pid) * MIB - before < 80 * MIB, (before, memory_mb(pid) * MIB)
    assert httpx.get(f"{demo_server.url}/healthz").status_code == 200


@pytest.mark.parametrize(
    ("encoding", "body", "status", "needle"),
    [
        ("br", b"\x0b\x01\x80{}\x03", 415, "gzip, deflate"),
        ("gzip, gzip", gzip.compress(gzip.compress(b"{}")), 415, "gzip, deflate"),
        ("gzip", b"not gzip at all", 400, "not valid gzip"),
        ("gzip", gzip.compress(b'{"inputs": []}')[:-12], 400, "truncated"),
        ("deflate", zlib.compress(b"{}") + b"trailing", 400, "after the end"),
    ],
)
def test_bad_encodings_are_refused_naming_the_problem(
    demo_server: ServerProcess, encoding: str, body: bytes, status: int, needle: str
) -> None:
    headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
    v2 = httpx.post(f"{demo_server.url}/v2/models/digits/infer", content=body, headers=headers)
    assert v2.status_code == status and needle in v2.json()["error"], v2.text
    predict = httpx.post(f"{demo_server.url}/predict", content=body, headers={**headers, **PNG})
    assert predict.status_code == status and needle in predict.json()["error"]["message"], predict.text
