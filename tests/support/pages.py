"""Small helpers the browser tests share: waiting on the DOM, console errors, resources."""

from __future__ import annotations

__all__ = ["Browser", "console_errors", "element", "elements", "foreign_resources", "wait_for"]

from collections.abc import Callable
from typing import Any, TypeVar

from selenium.webdriver import Chrome as Browser
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.conftest import WAIT_S

T = TypeVar("T")


def wait_for(driver: Browser, condition: Callable[[Browser], T], what: str) -> T:
    """Polls ``condition`` until it is truthy; the failure names ``what`` was awaited."""
    result: T = WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(
        condition, message=f"timed out waiting for {what}"
    )
    return result


def element(driver: Browser | WebElement, css: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, css)


def elements(driver: Browser | WebElement, css: str) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, css)


def console_errors(driver: Browser) -> list[str]:
    """The page's console errors since the last call (the log is drained by reading it)."""
    entries: list[dict[str, Any]] = driver.get_log("browser")
    return [entry["message"] for entry in entries if entry["level"] == "SEVERE"]


def foreign_resources(driver: Browser, origin: str) -> list[str]:
    """Every resource the page loaded from anywhere but ``origin`` (blob: and data: are local)."""
    urls: list[str] = driver.execute_script(
        "return performance.getEntriesByType('resource').map((entry) => entry.name)"
    )
    return [url for url in urls if not url.startswith((origin, "blob:", "data:"))]
