"""The served pages and the OpenAPI spec over HTTP, in-process (no browser, no models loaded):
no URL in them leaves the server, every asset they name is served, the admin routes carry a
bearer scheme without changing their 401 body, and ``/predict`` lists every accepted type."""

from __future__ import annotations

import asyncio
import re
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.demo import demo_config
from service.doors import schemas
from service.doors.intake import IMAGE_TYPES
from service.doors.ui import PLAYGROUND_DIR
from tests.conftest import ADMIN_TOKEN
from tests.support.serving import REPO

_ASSET = re.compile(r"""(?:src|href)=["']([^"']+)["']""")
_ABSOLUTE_URL = re.compile(r"\b(?:https?:)?//[\w.-]+")


class Client:
    """Blocking requests to an app in-process (ASGI, no lifespan: nothing loads)."""

    def __init__(self, app: FastAPI, root_path: str = "") -> None:
        self._transport = httpx.ASGITransport(app=app, root_path=root_path)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            async with httpx.AsyncClient(transport=self._transport, base_url="http://127.0.0.1") as http:
                return await http.request(method, url, **kwargs)

        return asyncio.run(send())

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)


@pytest.fixture(scope="module")
def app() -> Iterator[FastAPI]:
    """The demo app, routes and pages only."""
    app = create_app(demo_config({"MODEL_SERVE_ADMIN_TOKEN": ADMIN_TOKEN}))
    yield app
    app.state.runtime.workers.shutdown()


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Client:
    return Client(app)


@pytest.fixture(scope="module")
def spec(client: Client) -> dict[str, Any]:
    answer = client.get("/openapi.json")
    assert answer.status_code == 200
    document: dict[str, Any] = answer.json()
    return document


def _assets(html: str) -> list[str]:
    return _ASSET.findall(html)


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/", "/ui"])
def test_pages_name_only_assets_the_server_serves(client: Client, page: str) -> None:
    answer = client.get(page)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert _ABSOLUTE_URL.findall(answer.text) == []  # no CDN, no other host
    assets = _assets(answer.text)
    assert assets
    for asset in assets:
        url = asset if asset.startswith("/") else f"/{asset}"  # relative to / and /ui alike
        served = client.get(url)
        assert served.status_code == 200, url
        assert len(served.content) > 100, url


def test_docs_load_swagger_ui_from_the_server(client: Client) -> None:
    html = client.get("/docs").text
    assert "/static/docs/swagger-ui-bundle.js" in _assets(html)
    assert "/static/docs/swagger-ui.css" in _assets(html)
    assert '"validatorUrl": null' in html  # no badge fetched from validator.swagger.io
    bundle = client.get("/static/docs/swagger-ui-bundle.js")
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert b"SwaggerUIBundle" in bundle.content


def test_redoc_refuses_images_from_elsewhere(client: Client) -> None:
    answer = client.get("/redoc")
    assert "/static/docs/redoc.standalone.js" in _assets(answer.text)
    assert answer.headers["content-security-policy"] == "img-src 'self' data:"


def test_pages_follow_a_proxy_prefix(app: FastAPI) -> None:
    html = Client(app, root_path="/serve").get("/docs").text
    assert "/serve/static/docs/swagger-ui-bundle.js" in _assets(html)
    assert "url: '/serve/openapi.json'" in html


def test_playground_stays_on_its_server(client: Client) -> None:
    answer = client.get("/")
    policy = answer.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert answer.text == client.get("/ui").text
    for path in PLAYGROUND_DIR.iterdir():
        text = path.read_text()
        assert _ABSOLUTE_URL.findall(text) == [], path.name


def test_the_wheel_ships_every_playground_file() -> None:
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = package_data["service.doors"]  # the package that holds the playground
    for path in PLAYGROUND_DIR.rglob("*"):
        relative = path.relative_to(PLAYGROUND_DIR.parent).as_posix()
        assert path.is_dir() or any(fnmatch(relative, pattern) for pattern in patterns), relative


def test_admin_routes_use_the_bearer_scheme(spec: dict[str, Any]) -> None:
    assert spec["components"]["securitySchemes"] == {
        "AdminToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "the server's MODEL_SERVE_ADMIN_TOKEN",
        }
    }
    secured = {
        (method, path)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if operation.get("security")
    }
    admin_routes = {
        "/models/{name}/reload",
        "/models/{name}/rollback",
        "/v2/repository/models/{name}/load",
        "/v2/repository/models/{name}/unload",
    }
    assert secured == {("post", path) for path in admin_routes}
    for path in admin_routes:
        assert spec["paths"][path]["post"]["security"] == [{"AdminToken": []}]


def test_reload_documents_its_optional_body(spec: dict[str, Any]) -> None:
    body = spec["paths"]["/models/{name}/reload"]["post"]["requestBody"]
    assert body["required"] is False
    media = body["content"]["application/json"]
    assert set(media["schema"]["properties"]) == {"checkpoint"}
    assert media["schema"]["additionalProperties"] is False
    for example in media["examples"].values():
        schemas.ReloadRequest.model_validate(example["value"])  # every example is a valid body


def test_predict_lists_every_accepted_media_type(spec: dict[str, Any]) -> None:
    content = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    accepted = {kind.strip() for kind in IMAGE_TYPES.split(",")}
    assert accepted <= set(content)
    assert set(content) == accepted | {"application/octet-stream", "multipart/form-data"}
    assert content["multipart/form-data"]["schema"]["properties"]["file"]["items"]["format"] == "binary"
    # Swagger's "Try it out" asks for the first answer type: JSON, not a segmentation's bare PNG.
    answers = spec["paths"]["/predict"]["post"]["responses"]["200"]["content"]
    assert list(answers) == ["application/json", "image/png"]


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "admin routes need 'Authorization: Bearer <MODEL_SERVE_ADMIN_TOKEN>'"),
        ("Basic dXNlcjpwYXNz", "admin routes need 'Authorization: Bearer <MODEL_SERVE_ADMIN_TOKEN>'"),
        ("Bearer ", "admin routes need 'Authorization: Bearer <MODEL_SERVE_ADMIN_TOKEN>'"),
        ("Bearer wrong", "the admin token is wrong"),
        ("bearer wrong", "the admin token is wrong"),
    ],
)
@pytest.mark.parametrize("action", ["reload", "rollback"])
def test_admin_refusals_keep_the_contract_body(
    client: Client, action: str, authorization: str | None, message: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = client.post(f"/models/digits/{action}", headers=headers)
    assert answer.status_code == 401
    assert answer.json() == {"error": {"code": "unauthorized", "message": message}}
