"""Every error path of the contract against the real demo server, which stays healthy."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import ADMIN_TOKEN
from tests.support.serving import ServerProcess


def _png(width: int, height: int, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


GOOD = _png(28, 28)
PNG = {"Content-Type": "image/png"}


def _chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"\0" * min(size, total - sent)
        sent += size


def _expect(answer: httpx.Response, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code
    assert len(error["message"]) > 10


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b"", PNG, 400, "bad_image"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, PNG, 400, "bad_image"),
        (GOOD[: len(GOOD) // 2], PNG, 400, "bad_image"),
        (b"GIF89a" + b"\xff" * 50, {"Content-Type": "image/gif"}, 400, "bad_image"),
        (GOOD, {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        (GOOD, {}, 415, "unsupported_media_type"),
        (b'{"image": 1}', {"Content-Type": "application/json"}, 415, "unsupported_media_type"),
    ],
    ids=["empty", "random-bytes", "truncated", "broken-gif", "text", "no-type", "json"],
)
def test_bad_bodies(
    demo_server: ServerProcess, content: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    _expect(httpx.post(f"{demo_server.url}/predict", content=content, headers=headers), status, code)


def test_unknown_model_is_404(demo_server: ServerProcess) -> None:
    _expect(httpx.post(f"{demo_server.url}/predict?model=nope", content=GOOD, headers=PNG), 404, "not_found")


@pytest.mark.parametrize("top_k", ["abc", "0", "-3", "100000", "1.5"])
def test_bad_top_k_is_422(demo_server: ServerProcess, top_k: str) -> None:
    answer = httpx.post(f"{demo_server.url}/predict?top_k={top_k}", content=GOOD, headers=PNG)
    _expect(answer, 422, "invalid_parameter")


def test_body_over_the_limit_is_413_without_reading_it(demo_server: ServerProcess) -> None:
    declared = httpx.post(f"{demo_server.url}/predict", content=b"\0" * (21 << 20), headers=PNG)
    _expect(declared, 413, "too_large")
    streamed = httpx.post(f"{demo_server.url}/predict", content=_chunks(200 << 20), headers=PNG, timeout=60)
    _expect(streamed, 413, "too_large")


def test_decompression_bomb_is_413(demo_server: ServerProcess) -> None:
    bomb = _png(9000, 5000, mode="1")  # 45 M pixels in a few kB
    assert len(bomb) < 100_000
    _expect(httpx.post(f"{demo_server.url}/predict", content=bomb, headers=PNG), 413, "too_large")


def test_too_many_parts_is_413(demo_server: ServerProcess) -> None:
    files = [("file", (f"{i}.png", GOOD, "image/png")) for i in range(2000)]
    _expect(httpx.post(f"{demo_server.url}/predict", files=files, timeout=60), 413, "too_large")


def test_multipart_without_file_part_is_400(demo_server: ServerProcess) -> None:
    answer = httpx.post(
        f"{demo_server.url}/predict", data={"note": "no image"}, files=[("other", ("a.png", GOOD))]
    )
    _expect(answer, 400, "bad_image")


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic abc", "Bearer"])
def test_admin_routes_refuse_without_the_token(demo_server: ServerProcess, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for action in ("reload", "rollback"):
        answer = httpx.post(f"{demo_server.url}/models/digits/{action}", headers=headers)
        _expect(answer, 401, "unauthorized")


def test_unknown_route_and_method_are_json_errors(demo_server: ServerProcess) -> None:
    assert httpx.get(f"{demo_server.url}/nowhere").json()["error"]["code"] == "not_found"
    assert httpx.get(f"{demo_server.url}/predict").status_code == 405


def test_server_stays_healthy_after_bad_input(demo_server: ServerProcess, samples_dir: Path) -> None:
    for content in (b"", b"junk", GOOD[:20]):
        httpx.post(f"{demo_server.url}/predict", content=content, headers=PNG)
    assert httpx.get(f"{demo_server.url}/healthz").status_code == 200
    assert httpx.get(f"{demo_server.url}/readyz").status_code == 200
    answer = httpx.post(f"{demo_server.url}/predict", content=GOOD, headers=PNG)
    assert answer.status_code == 200
    assert answer.headers["x-request-id"]
    assert "server" not in answer.headers  # nothing tells a scanner what runs here
    assert (
        httpx.get(
            f"{demo_server.url}/models/digits", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ).status_code
        == 200
    )
