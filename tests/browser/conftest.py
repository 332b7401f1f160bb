"""A real headless Chromium driven by Selenium, for the pages model-serve serves itself.

Skipped (with the reason) where Debian's ``chromium`` and ``chromium-driver`` are absent. The
system chromedriver is passed explicitly, so Selenium Manager never downloads anything, and
the browser resolves no host but loopback: a page that reached for a CDN would break here.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.serving import REPO

if TYPE_CHECKING:
    from selenium.webdriver import Chrome

ARTIFACTS = REPO / "reports" / "browser"
WAIT_S = 30.0
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1100",
    # Offline for real: every name but loopback fails to resolve.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)


def _system_browser() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("browser tests need Debian's chromium and chromium-driver (apt-get install them)")
    return chromium, driver


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go (``reports/`` is git-ignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chrome]:
    """One headless Chromium for the session, with a fresh profile, its console log kept."""
    chromium, driver_path = _system_browser()
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()
