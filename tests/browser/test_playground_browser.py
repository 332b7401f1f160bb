"""The playground at ``/`` in a real headless Chromium against the demo server: the digit
samples show their own class as the top bar (as the model run in-process says), the shapes
sample's mask is drawn over the image in the legend's colours (read back from the canvas),
a text file shows the server's error to the person, and the controls follow the chosen model."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("selenium")

from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from models.demo import DIGITS, SHAPES
from models.demo_training import load_demo_model
from tests.support.pages import (
    Browser,
    console_errors,
    element,
    elements,
    foreign_resources,
    wait_for,
)
from tests.support.reference import class_probabilities, preprocess
from tests.support.serving import ServerProcess


def _open_playground(browser: Browser, server: ServerProcess, model: str) -> None:
    browser.get(f"{server.url}/")
    wait_for(browser, lambda d: elements(d, "#model option"), "the model list")
    Select(element(browser, "#model")).select_by_value(model)
    wait_for(browser, lambda d: element(d, "#model-info").text.startswith(f"{model}: "), f"{model}'s details")


def _drop(browser: Browser, *paths: Path) -> list[WebElement]:
    """Gives the files to the page's file input; the result cards once each has settled."""
    before = len(elements(browser, ".result"))
    element(browser, "#files").send_keys("\n".join(str(path) for path in paths))

    def settled(driver: Browser) -> list[WebElement]:
        cards = elements(driver, ".result")
        if len(cards) != before + len(paths):
            return []
        return cards if all(card.get_attribute("data-state") != "pending" for card in cards) else []

    return wait_for(browser, settled, "the predictions")[: len(paths)]


def _card(cards: list[WebElement], name: str) -> WebElement:
    [card] = [card for card in cards if element(card, ".file-name").text == name]
    return card


def _percent(text: str) -> float:
    return float(text.rstrip("%")) / 100


def test_digit_samples_show_their_class(
    browser: Browser, demo_server: ServerProcess, samples_dir: Path, artifacts: Path
) -> None:
    console_errors(browser)
    _open_playground(browser, demo_server, "digits")
    samples = [samples_dir / "digit_3.png", samples_dir / "digit_7.png"]
    cards = _drop(browser, *samples)
    model = load_demo_model(DIGITS)
    for sample in samples:
        card = _card(cards, sample.name)
        assert card.get_attribute("data-state") == "done", element(card, ".error").text
        expected = sample.stem.split("_")[1]  # digit_7.png is a 7
        bars = elements(card, ".bar")
        assert len(bars) == 5
        assert element(bars[0], ".label").text == expected
        x, _ = preprocess(sample.read_bytes(), DIGITS.size, DIGITS.channels, DIGITS.mean, DIGITS.std)
        probabilities = class_probabilities(model, x)
        for bar in bars:
            index = int(bar.get_attribute("data-class-index") or "-1")
            assert _percent(element(bar, ".score").text) == pytest.approx(
                float(probabilities[index]), abs=6e-4
            )
        assert int(bars[0].get_attribute("data-class-index") or "-1") == int(probabilities.argmax())
        assert re.fullmatch(r"digits · version [0-9a-f]{12} · \d+ ms", element(card, ".meta").text)
    assert foreign_resources(browser, demo_server.url) == []
    assert console_errors(browser) == []
    browser.save_screenshot(str(artifacts / "playground_digits.png"))


def _server_mask(server: ServerProcess, sample: Path) -> np.ndarray:
    answer = httpx.post(
        f"{server.url}/predict?model=shapes",
        content=sample.read_bytes(),
        headers={"Content-Type": "image/png", "Accept": "image/png"},
    )
    answer.raise_for_status()
    with Image.open(io.BytesIO(answer.content)) as mask:
        return np.asarray(mask)


def _canvas_pixels(browser: Browser, canvas: WebElement) -> np.ndarray:
    """What the page drew, exactly: the canvas as a lossless PNG, decoded here."""
    url: str = browser.execute_script("return arguments[0].toDataURL('image/png')", canvas)
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as drawn:
        return np.asarray(drawn.convert("RGB")).astype(np.int16)


def test_shapes_sample_shows_its_mask_in_the_legend_colours(
    browser: Browser, demo_server: ServerProcess, samples_dir: Path, artifacts: Path
) -> None:
    _open_playground(browser, demo_server, "shapes")
    sample = samples_dir / "shapes_1.png"
    [card] = _drop(browser, sample)
    assert card.get_attribute("data-state") == "done", element(card, ".error").text
    canvas = element(card, "canvas.overlay")
    drawn = _canvas_pixels(browser, canvas)
    mask = _server_mask(demo_server, sample)
    with Image.open(sample) as image:
        original = np.asarray(image.convert("RGB")).astype(np.int16)
    assert drawn.shape == original.shape

    alpha = float(canvas.get_attribute("data-alpha") or "nan")
    rows = {
        int(row.get_attribute("data-class-index") or "-1"): row for row in elements(card, ".legend tbody tr")
    }
    assert sorted(rows) == list(range(len(SHAPES.labels)))
    counts = np.bincount(mask.ravel(), minlength=len(SHAPES.labels))
    assert (counts[1:] > 0).sum() >= 2, "the sample should show at least two shapes"
    background = mask == 0
    assert np.abs(drawn[background] - original[background]).max() <= 1  # image untouched
    for index, row in rows.items():
        cells = elements(row, "td")
        assert cells[1].text == SHAPES.labels[index]
        assert _percent(cells[2].text) == pytest.approx(counts[index] / mask.size, abs=6e-4)
        if index == 0:
            continue
        colour = np.array(
            [int(c) for c in (element(row, ".swatch").get_attribute("data-rgb") or "").split(",")]
        )
        where = mask == index
        expected = np.round(original[where] * (1 - alpha) + colour * alpha)
        assert np.abs(drawn[where] - expected).max() <= 1, f"class {index} drawn in another colour"
    assert re.fullmatch(r"shapes · version [0-9a-f]{12} · \d+ ms", element(card, ".meta").text)
    card.screenshot(str(artifacts / "playground_shapes.png"))


_DROP_TEXT_FILE = """
const transfer = new DataTransfer();
transfer.items.add(new File([arguments[1]], arguments[0], { type: "text/plain" }));
document.getElementById("drop-zone").dispatchEvent(
  new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
"""


def test_a_dropped_text_file_shows_the_server_error(
    browser: Browser, demo_server: ServerProcess, artifacts: Path
) -> None:
    _open_playground(browser, demo_server, "digits")
    browser.execute_script(_DROP_TEXT_FILE, "notes.txt", "not an image\n")
    card = wait_for(
        browser,
        lambda d: [c for c in elements(d, ".result") if c.get_attribute("data-state") != "pending"],
        "the answer to the dropped file",
    )[0]
    assert element(card, ".file-name").text == "notes.txt"
    assert card.get_attribute("data-state") == "error"
    error = element(card, ".error")
    assert error.is_displayed()
    assert error.get_attribute("role") == "alert"
    assert error.text.startswith("HTTP 400: bad_image: ")
    assert element(card, ".meta").text == "digits · failed"
    card.screenshot(str(artifacts / "playground_error.png"))


def _placement(devices: list[str]) -> str:
    """What the page should say about where the replicas run (see playground.js)."""
    counts = {device: devices.count(device) for device in dict.fromkeys(devices)}
    places = [f"{d} ({n})" if len(counts) > 1 and n > 1 else d for d, n in counts.items()]
    return ("" if len(devices) == 1 else f"{len(devices)} replicas ") + "on " + ", ".join(places)


def test_the_controls_follow_the_chosen_model(browser: Browser, demo_server: ServerProcess) -> None:
    """The "Top classes" field only for a classifier (also after switching back), each device named once."""
    _open_playground(browser, demo_server, "digits")
    for model, top_k_shown in (("digits", True), ("shapes", False), ("digits", True)):
        Select(element(browser, "#model")).select_by_value(model)
        wait_for(browser, lambda d, m=model: element(d, "#model-info").text.startswith(f"{m}: "), model)
        assert element(browser, "#top-k-field").is_displayed() is top_k_shown, model
        devices = httpx.get(f"{demo_server.url}/models/{model}").json()["devices"]
        info = element(browser, "#model-info").text
        assert info.endswith(" · " + _placement(devices)), info
