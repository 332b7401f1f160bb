"""Hostile clients against a real server: bad bodies, bombs, huge and endless uploads, slow sockets.

Each gets the right status where one is returned; the server stays healthy throughout and its
resident memory stays bounded. Every loop is bounded in count and time; only loopback traffic.
"""

from __future__ import annotations

import io
import random
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support.harness import model_entry, png, save_random_weights, write_config
from tests.support.loadgen import PNG
from tests.support.memory import memory_mb
from tests.support.serving import ServerProcess
from tests.support.waiting import wait_until

ARCH = "tests.support.archs:slow_classifier"
MAX_BODY = 4 << 20
MAX_PIXELS = 4_000_000
GOOD = png(None, seed=1)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` in a few dozen bytes (its pixel data is bogus)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _real_bomb() -> bytes:
    """A valid PNG of 36 M pixels in a few kB: decoding it would take 36 MB per copy."""
    buffer = io.BytesIO()
    Image.new("1", (6000, 6000)).save(buffer, format="PNG")
    return buffer.getvalue()


def _upload_head(content_length: str) -> bytes:
    """The request line and headers of a PNG upload, as a raw client would send them."""
    return (
        "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


def _chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    block = b"\0" * size
    for _ in range(total // size):
        yield block


def _multipart(parts: int, field: str = "file") -> tuple[bytes, dict[str, str]]:
    """``parts`` tiny parts, built by hand (fast for thousands)."""
    boundary = "hostileboundary"
    piece = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + GOOD
        + b"\r\n"
    )
    if field != "file":  # plain text fields
        piece = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\nx\r\n'.encode()
    body = piece * parts + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


class Server:
    """The running server plus its memory baseline, taken after a warm-up round."""

    def __init__(self, process: ServerProcess) -> None:
        self.process = process
        self.url = process.url
        self.pid = process.process.pid
        self.baseline_mb = 0.0

    def predict_ok(self, limit_s: float = 2.0) -> float:
        started = time.monotonic()
        answer = httpx.post(f"{self.url}/predict", content=GOOD, headers=PNG, timeout=10)
        took = time.monotonic() - started
        assert answer.status_code == 200, answer.text
        assert took < limit_s, f"a normal request took {took:.2f} s"
        return took

    def assert_healthy(self) -> None:
        assert self.process.process.poll() is None, "the server died"
        assert httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        self.predict_ok()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("hostile")
    save_random_weights(ARCH, {"delay_s": 0.0}, folder / "m.pt")
    entry = model_entry(ARCH, "m.pt", init_args={"delay_s": 0.0}, batching={"max_batch_size": 8})
    limits = {"max_body_bytes": MAX_BODY, "max_image_pixels": MAX_PIXELS, "max_images_per_request": 64}
    with ServerProcess(write_config(folder, {"m": entry}, server=limits), folder / "server.log") as process:
        served = Server(process)
        _hostile_round(served, rounds=1)  # warm-up: every path once, allocator pools filled
        for _ in range(20):
            served.predict_ok()
        served.baseline_mb = memory_mb(served.pid)
        yield served


def _expect(answer: httpx.Response, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text[:300]
    assert answer.json()["error"]["code"] == code


BAD_BODIES = {
    "empty": (b"", PNG, 400, "bad_image"),
    "truncated": (GOOD[: len(GOOD) // 2], PNG, 400, "bad_image"),
    "random-bytes": (random.Random(0).randbytes(5000), PNG, 400, "bad_image"),
    "png-magic-then-junk": (b"\x89PNG\r\n\x1a\n" + random.Random(1).randbytes(500), PNG, 400, "bad_image"),
    "svg": (
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        {"Content-Type": "image/svg+xml"},
        400,
        "bad_image",
    ),
    "text-type": (GOOD, {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
    "json-type": (b'{"image": "x"}', {"Content-Type": "application/json"}, 415, "unsupported_media_type"),
    "no-type": (GOOD, {}, 415, "unsupported_media_type"),
    "form-urlencoded": (
        b"file=abc",
        {"Content-Type": "application/x-www-form-urlencoded"},
        415,
        "unsupported_media_type",
    ),
    "multipart-no-boundary": (b"--x\r\n", {"Content-Type": "multipart/form-data"}, 400, "bad_image"),
    "multipart-garbage": (
        b"garbage",
        {"Content-Type": "multipart/form-data; boundary=abc"},
        400,
        "bad_image",
    ),
    "bomb-header": (_png_header(100_000, 100_000), PNG, 413, "too_large"),
    "bomb-over-limit": (_png_header(3000, 3000), PNG, 413, "too_large"),
    "zero-size": (_png_header(0, 10), PNG, 400, "bad_image"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_bodies_get_the_right_status(server: Server, case: str) -> None:
    content, headers, status, code = BAD_BODIES[case]
    _expect(httpx.post(f"{server.url}/predict", content=content, headers=headers, timeout=10), status, code)


def test_a_real_decompression_bomb_is_413_also_inside_multipart(server: Server) -> None:
    bomb = _real_bomb()
    assert len(bomb) < 100_000
    _expect(httpx.post(f"{server.url}/predict", content=bomb, headers=PNG, timeout=10), 413, "too_large")
    files = [("file", ("ok.png", GOOD, "image/png")), ("file", ("bomb.png", bomb, "image/png"))]
    _expect(httpx.post(f"{server.url}/predict", files=files, timeout=10), 413, "too_large")
    server.assert_healthy()


def test_a_200_mb_streamed_body_is_cut_at_the_limit(server: Server) -> None:
    started = time.monotonic()
    answer = httpx.post(f"{server.url}/predict", content=_chunks(200 << 20), headers=PNG, timeout=30)
    _expect(answer, 413, "too_large")
    assert time.monotonic() - started < 10
    server.assert_healthy()


@pytest.mark.parametrize(
    ("length", "status"),
    [("1000000000000", 413), (str(MAX_BODY + 1), 413), ("abc", 400), ("-1", 400)],
    ids=["terabyte", "one-over", "not-a-number", "negative"],
)
def test_a_declared_content_length_is_judged_before_the_body(
    server: Server, length: str, status: int
) -> None:
    """Only the headers are sent: the answer must come without waiting for the body."""
    with socket.create_connection(("127.0.0.1", server.process.port), timeout=5) as sock:
        sock.sendall(_upload_head(length))
        head = sock.recv(4096).split(b"\r\n", 1)[0]
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), head


@pytest.mark.parametrize(
    ("parts", "field"), [(3000, "file"), (5000, "note")], ids=["3000-files", "5000-fields"]
)
def test_thousands_of_multipart_parts_are_413(server: Server, parts: int, field: str) -> None:
    body, headers = _multipart(parts, field)
    assert len(body) < MAX_BODY
    started = time.monotonic()
    _expect(httpx.post(f"{server.url}/predict", content=body, headers=headers, timeout=30), 413, "too_large")
    assert time.monotonic() - started < 5
    server.assert_healthy()


def test_the_largest_allowed_multipart_batch_is_served(server: Server) -> None:
    body, headers = _multipart(64)
    answer = httpx.post(f"{server.url}/predict", content=body, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text[:300]
    assert len(answer.json()["predictions"]) == 64


def _in_flight(url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name == "model_serve_in_flight_requests" and sample.labels.get("model") == "m":
                return float(sample.value)
    return 0.0


def test_slow_clients_do_not_block_normal_requests(server: Server) -> None:
    port = server.process.port
    body_sockets: list[socket.socket] = []
    header_sockets: list[socket.socket] = []
    try:
        for _ in range(20):  # headers complete, body arriving a few bytes at a time
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(_upload_head("100000"))
            body_sockets.append(sock)
        for _ in range(10):  # slowloris: the request line and headers never finish
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
            header_sockets.append(sock)
        worst = 0.0
        for step in range(10):  # about 2 s of dripping
            for sock in body_sockets:
                sock.sendall(GOOD[step * 10 : step * 10 + 10] or b"\0" * 10)
            for sock in header_sockets:
                sock.sendall(f"X-Slow-{step}: x\r\n".encode())
            worst = max(worst, server.predict_ok(limit_s=1.5))
            time.sleep(0.2)  # the drip under test: slow clients, not a wait
        assert _in_flight(server.url) >= 20, "the slow uploads are not being read"
        for _ in range(5):  # now they hang, holding their connections
            worst = max(worst, server.predict_ok(limit_s=1.5))
        assert httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200
    finally:
        for sock in body_sockets + header_sockets:
            sock.close()
    wait_until(lambda: _in_flight(server.url) == 0, 10, "abandoned uploads released (none in flight)")
    server.assert_healthy()


def test_oversized_headers_are_refused(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.process.port), timeout=2) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        try:
            for i in range(64):  # 1 MB of headers; any sane limit is far below
                sock.sendall(b"X-Pad-%d: " % i + b"a" * 16_000 + b"\r\n")
            answer = sock.recv(200)
        except (ConnectionResetError, BrokenPipeError):
            answer = b"closed"
        except TimeoutError:
            answer = b"no answer"
    assert answer == b"closed" or answer.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400")), answer


def test_large_but_reasonable_headers_and_a_body_in_one_read_still_work(server: Server) -> None:
    """The head bound counts only a head that has not ended: 32 kB of headers pass, and so does
    a body that arrives in the same read as the head."""
    headers = {**PNG, **{f"x-pad-{i}": "a" * 4000 for i in range(8)}}
    answer = httpx.post(f"{server.url}/predict", content=GOOD, headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    big = png(None, size=(600, 400), seed=4)  # ~700 kB: read together with its head
    assert httpx.post(f"{server.url}/predict", content=big, headers=PNG, timeout=10).status_code == 200


def _hostile_round(server: Server, rounds: int) -> None:
    bomb = _real_bomb()
    many, many_headers = _multipart(3000)
    for _ in range(rounds):
        for content, headers, _status, _code in BAD_BODIES.values():
            httpx.post(f"{server.url}/predict", content=content, headers=headers, timeout=10)
        httpx.post(f"{server.url}/predict", content=bomb, headers=PNG, timeout=10)
        httpx.post(f"{server.url}/predict", content=_chunks(200 << 20), headers=PNG, timeout=30)
        httpx.post(f"{server.url}/predict", content=many, headers=many_headers, timeout=30)
        body, headers = _multipart(64)
        httpx.post(f"{server.url}/predict", content=body, headers=headers, timeout=30)
        httpx.post(f"{server.url}/predict", content=b"\0" * (MAX_BODY - 100), headers=PNG, timeout=30)


def test_memory_stays_bounded_after_hostile_rounds(server: Server) -> None:
    _hostile_round(server, rounds=3)
    for _ in range(20):
        server.predict_ok()
    grown = memory_mb(server.pid) - server.baseline_mb
    peak = memory_mb(server.pid, "VmHWM") - server.baseline_mb
    print(f"RSS baseline {server.baseline_mb:.0f} MB, grown {grown:.0f} MB, peak {peak:.0f} MB")
    assert grown < 150, f"RSS grew by {grown:.0f} MB over the warm baseline of {server.baseline_mb:.0f} MB"
    # the peak too: a 200 MB upload buffered whole, then freed, would show here and only here
    assert peak < 150, f"RSS peaked {peak:.0f} MB over the warm baseline"
    server.assert_healthy()


def test_an_abandoned_upload_is_not_an_unhandled_error(server: Server) -> None:
    seen = len(server.process.log())
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.process.port), timeout=5) as sock:
            sock.sendall(_upload_head("1000"))
            sock.sendall(GOOD[:100])
            wait_until(lambda: _in_flight(server.url) >= 1, 10, "the abandoned upload in flight")
    wait_until(lambda: _in_flight(server.url) == 0, 10, "the abandoned uploads let go")
    wait_until(  # the handler logs right after it lets go of the request
        lambda: server.process.log()[seen:].count("POST /predict 499") >= 3,
        10,
        "three access lines of abandoned uploads (499)",
    )
    new = server.process.log()[seen:]
    assert "Traceback" not in new and "unhandled error" not in new, new[-2000:]


def test_a_trickling_upload_is_answered_408(tmp_path: Path) -> None:
    """A body slower than request_timeout_s frees its connection instead of holding it."""
    save_random_weights(ARCH, {"delay_s": 0.0}, tmp_path / "m.pt")
    entry = model_entry(ARCH, "m.pt", init_args={"delay_s": 0.0})
    config = write_config(tmp_path, {"m": entry}, server={"request_timeout_s": 1.0})
    with ServerProcess(config, tmp_path / "server.log") as process:
        with socket.create_connection(("127.0.0.1", process.port), timeout=5) as sock:
            sock.sendall(_upload_head("1000") + GOOD[:10])
            started = time.monotonic()
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"request_timeout"' in answer
        assert time.monotonic() - started < 4
        assert httpx.get(f"{process.url}/healthz").status_code == 200
