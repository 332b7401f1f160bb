"""The small bodies of the reload and repository routes are read within 64 KiB, declared or
chunked, with or without the admin token (the index and a load's body are read before any
token check): a larger one is 413 before it is held, and the server stays healthy."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.support.serving import ServerProcess

OVER = 64 * 1024 + 1
ROUTES = [
    "/v2/repository/index",
    "/v2/repository/models/digits/load",
    "/models/digits/reload",
]


def _chunked(size: int) -> Iterator[bytes]:
    """A body with no Content-Length, sent in 16 KiB chunks."""
    for start in range(0, size, 16384):
        yield b" " * min(16384, size - start)


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("token", [None, ADMIN_TOKEN])
@pytest.mark.parametrize("declared", [True, False])
def test_a_body_over_64_kib_is_413(
    demo_server: ServerProcess, path: str, token: str | None, declared: bool
) -> None:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    content = b" " * OVER if declared else _chunked(10 * OVER)
    answer = httpx.post(demo_server.url + path, content=content, headers=headers, timeout=30)
    if path == "/models/digits/reload" and token is None:
        assert answer.status_code == 401, answer.text  # the token is checked first there
        return
    assert answer.status_code == 413, answer.text
    body = answer.json()
    message = body["error"] if path.startswith("/v2") else body["error"]["message"]
    assert "65536" in message, body


def test_a_body_within_the_limit_still_works(demo_server: ServerProcess) -> None:
    padded = b'{"ready": true}' + b" " * (60 * 1024)
    answer = httpx.post(f"{demo_server.url}/v2/repository/index", content=padded)
    assert answer.status_code == 200, answer.text
    assert {entry["name"] for entry in answer.json()} == {"digits", "shapes"}
    assert httpx.get(f"{demo_server.url}/healthz").status_code == 200
