"""Every error under ``/v2`` is the protocol's ``{"error": "<message>"}`` with the right status:
unknown routes, models, versions and methods alike, read raw and through tritonclient (whose
exception message is the server's string). The other routes keep the HTTP API's body.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from tests.support.serving import ServerProcess

WRONG_VERSION = "000000000000"


@pytest.fixture(scope="module")
def http_client(demo_server: ServerProcess) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(demo_server.url.removeprefix("http://"))
    yield client
    client.close()


def _v2_message(answer: httpx.Response, status: int) -> str:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert list(body) == ["error"] and isinstance(body["error"], str), body
    message: str = body["error"]
    return message


@pytest.mark.parametrize(
    ("method", "path", "needle"),
    [
        ("GET", "/v2/nowhere", "GET /v2/nowhere"),
        ("GET", "/v2/models/digits/nowhere", "/v2/models/digits/nowhere"),
        ("POST", "/v2/models/digits/infer/more", "/v2/models/digits/infer/more"),
        ("POST", "/v2/models/digits/versions/1/2/infer", "/v2/models/digits/versions/1/2/infer"),
        ("GET", "/v2/models/nope", "nope"),
        ("GET", "/v2/models/nope/config", "nope"),
        ("GET", "/v2/models/nope/stats", "nope"),
        ("GET", "/v2/models/nope/ready", "nope"),
        ("POST", "/v2/models/nope/infer", "nope"),
        ("POST", "/v2/repository/models/nope/unload", ""),
        ("GET", f"/v2/models/digits/versions/{WRONG_VERSION}", WRONG_VERSION),
        ("GET", f"/v2/models/digits/versions/{WRONG_VERSION}/config", WRONG_VERSION),
        ("POST", f"/v2/models/digits/versions/{WRONG_VERSION}/infer", WRONG_VERSION),
    ],
)
def test_unknown_routes_models_and_versions_are_404_with_a_string(
    demo_server: ServerProcess, method: str, path: str, needle: str
) -> None:
    answer = httpx.request(method, demo_server.url + path, json={"inputs": []})
    status = 401 if path.endswith("/unload") else 404  # the token is checked first
    assert needle in _v2_message(answer, status)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v2/models/digits/infer", "POST"),
        ("PUT", f"/v2/models/digits/versions/{WRONG_VERSION}/infer", "POST"),
        ("DELETE", "/v2/models/digits", "GET"),
        ("POST", "/v2/health/ready", "GET"),
        ("GET", "/v2/repository/index", "POST"),
        ("POST", "/v2", "GET"),
    ],
)
def test_a_wrong_method_is_405_with_allow(
    demo_server: ServerProcess, method: str, path: str, allowed: str
) -> None:
    answer = httpx.request(method, demo_server.url + path)
    message = _v2_message(answer, 405)
    assert allowed in answer.headers["allow"].split(", "), answer.headers
    assert f"{method} {path}" in message and allowed in message


def test_the_other_routes_keep_the_http_api_body(demo_server: ServerProcess) -> None:
    unknown = httpx.get(f"{demo_server.url}/nowhere")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    wrong_method = httpx.get(f"{demo_server.url}/predict")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "http_error"
    assert wrong_method.headers["allow"] == "POST"
    png = {"Content-Type": "image/png"}
    model = httpx.post(f"{demo_server.url}/predict?model=nope", content=b"x", headers=png)
    assert model.status_code == 404 and model.json()["error"]["code"] == "not_found"


def test_tritonclient_exceptions_carry_the_server_message(
    http_client: triton_http.InferenceServerClient,
) -> None:
    calls = (
        lambda: http_client.get_model_metadata("nope"),
        lambda: http_client.get_model_config("nope"),
        lambda: http_client.get_inference_statistics("nope"),
        lambda: http_client.get_model_metadata("digits", WRONG_VERSION),
        lambda: http_client.get_model_config("digits", WRONG_VERSION),
    )
    for call in calls:
        with pytest.raises(InferenceServerException) as raised:
            call()
        text = str(raised.value)  # tritonclient's __str__ fails on a dict body
        assert raised.value.status() == "404", text
        assert "nope" in text or WRONG_VERSION in text, text
        assert text == f"[404] {raised.value.message()}"
    assert http_client.is_server_live()
