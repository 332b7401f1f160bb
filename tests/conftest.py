"""Fixtures shared by every layer: the demo server as a real process on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.serving import ServerProcess

ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``model-serve serve`` with no config: the built-in demo models."""
    home = tmp_path_factory.mktemp("home")
    env = {"MODEL_SERVE_ADMIN_TOKEN": ADMIN_TOKEN, "MODEL_SERVE_HOME": str(home)}
    with ServerProcess(None, home / "server.log", env) as server:
        yield server


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    from models.demo import SAMPLES_DIR

    return SAMPLES_DIR
