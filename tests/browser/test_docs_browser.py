"""``/docs`` and ``/redoc`` in a real headless Chromium that can reach nothing but loopback:
Swagger UI renders every route, a ``/predict`` "Try it out" with a sample answers 200, and
the Authorize button's bearer token lets ``/models/{name}/reload`` run from the page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("selenium")

from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from tests.conftest import ADMIN_TOKEN
from tests.support.pages import (
    Browser,
    console_errors,
    element,
    elements,
    foreign_resources,
    wait_for,
)
from tests.support.serving import ServerProcess

PREDICT = "#operations-default-predict_predict_post"
RELOAD = "#operations-default-reload_model_models__name__reload_post"
ROLLBACK = "#operations-default-rollback_model_models__name__rollback_post"
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def _open_docs(browser: Browser, server: ServerProcess) -> list[str]:
    browser.get(f"{server.url}/docs")
    blocks = wait_for(browser, lambda d: elements(d, ".opblock .opblock-summary-path"), "Swagger's routes")
    return [block.get_attribute("data-path") or "" for block in blocks]


def _try_it_out(browser: Browser, operation: str) -> WebElement:
    """Expands ``operation`` and turns on its form; returns the operation's block."""
    block = element(browser, operation)
    element(block, ".opblock-summary-control").click()
    wait_for(browser, lambda d: elements(block, ".try-out__btn"), "the Try it out button").pop().click()
    wait_for(browser, lambda d: elements(block, ".btn.execute"), "the Execute button")
    return block


def _execute(browser: Browser, block: WebElement) -> tuple[str, str]:
    """Executes the operation; the status code and body Swagger shows for the live answer."""
    live = ".live-responses-table tr.response"
    for clear in elements(block, ".btn-clear"):  # an earlier answer would be read as this one's
        clear.click()
        wait_for(browser, lambda d: not elements(block, live), "the earlier answer to clear")
    element(block, ".btn.execute").click()
    status = wait_for(
        browser,
        lambda d: [cell.text for cell in elements(block, f"{live} .response-col_status")],
        "the live answer",
    )[0]
    body = element(block, f"{live} .response-col_description pre").text
    return status, body


def test_docs_render_every_route_with_no_network(
    browser: Browser, demo_server: ServerProcess, artifacts: Path
) -> None:
    console_errors(browser)
    paths = _open_docs(browser, demo_server)
    for expected in (
        "/predict",
        "/models",
        "/models/{name}",
        "/models/{name}/reload",
        "/healthz",
        "/metrics",
    ):
        assert expected in paths
    assert "model-serve" in element(browser, ".info .title").text
    # The admin routes carry the lock of the bearer scheme; /predict does not.
    assert elements(browser, f"{RELOAD} .authorization__btn")
    assert elements(browser, f"{ROLLBACK} .authorization__btn")
    assert not elements(browser, f"{PREDICT} .authorization__btn")
    assert element(browser, ".btn.authorize").is_displayed()
    assert foreign_resources(browser, demo_server.url) == []
    assert console_errors(browser) == []
    browser.save_screenshot(str(artifacts / "docs.png"))


def test_docs_try_it_out_predicts_on_a_sample(
    browser: Browser, demo_server: ServerProcess, samples_dir: Path, artifacts: Path
) -> None:
    _open_docs(browser, demo_server)
    block = _try_it_out(browser, PREDICT)
    content_types = Select(element(block, ".opblock-section-request-body select.content-type"))
    assert "image/tiff" in [option.text for option in content_types.options]
    content_types.select_by_visible_text("image/png")
    element(block, "tr[data-param-name='model'] input").send_keys("digits")
    element(block, ".opblock-section-request-body input[type='file']").send_keys(
        str(samples_dir / "digit_7.png")
    )
    status, body = _execute(browser, block)
    assert status == "200", body
    answer = json.loads(body)
    assert answer["model"] == "digits"
    assert answer["predictions"][0]["label"] == "7"
    element(block, ".responses-wrapper").screenshot(str(artifacts / "docs_predict_answer.png"))


def test_docs_authorize_then_reload(browser: Browser, demo_server: ServerProcess, artifacts: Path) -> None:
    _open_docs(browser, demo_server)
    block = _try_it_out(browser, RELOAD)
    element(block, "tr[data-param-name='name'] input").send_keys("digits")
    status, body = _execute(browser, block)
    assert status == "401"
    assert json.loads(body)["error"]["code"] == "unauthorized"  # the contract's body, as before

    element(browser, ".btn.authorize").click()
    dialog = wait_for(browser, lambda d: elements(d, ".modal-ux"), "the Authorize dialog")[0]
    element(dialog, "input").send_keys(ADMIN_TOKEN)
    element(dialog, ".auth-btn-wrapper .btn.authorize").click()
    wait_for(browser, lambda d: elements(dialog, ".auth-btn-wrapper .btn-done"), "authorized").pop().click()

    status, body = _execute(browser, block)
    assert status == "200", body
    answer = json.loads(body)
    assert answer["model"] == "digits"
    assert answer["version"] == answer["previous_version"]  # same file: nothing changes
    element(block, ".responses-wrapper").screenshot(str(artifacts / "docs_reload_answer.png"))


def test_redoc_renders_with_no_network(browser: Browser, demo_server: ServerProcess, artifacts: Path) -> None:
    console_errors(browser)
    browser.get(f"{demo_server.url}/redoc")
    title = wait_for(browser, lambda d: [h.text for h in elements(d, "h1") if h.text], "ReDoc's title")
    assert title[0].startswith("model-serve")
    menu = wait_for(browser, lambda d: elements(d, ".menu-content li"), "ReDoc's menu")
    assert any("Predict on one or more images" in item.text for item in menu)
    # ReDoc's menu asks for its logo from a CDN; the page's policy refuses it before any fetch.
    assert foreign_resources(browser, demo_server.url) == [REDOC_LOGO]
    [refused] = console_errors(browser)
    assert REDOC_LOGO in refused
    assert "Content Security Policy" in refused
    assert "has been blocked" in refused
    browser.save_screenshot(str(artifacts / "redoc.png"))
