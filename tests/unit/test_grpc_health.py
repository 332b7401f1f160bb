"""``grpc.health.v1`` statuses read from readiness itself, in process: before loading, once
warm, and from the moment a drain begins (the real-server tests cover Check and Watch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.app import create_app
from service.config import load_config
from service.doors.v2.health import NOT_SERVING, SERVICE_UNKNOWN, SERVING, Health
from tests.support.harness import model_entry, save_random_weights, serving, write_config

ARCH = "tests.support.archs:slow_classifier"
ARGS = {"delay_s": 0.0, "in_channels": 1, "num_classes": 3}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    save_random_weights(ARCH, ARGS, tmp_path / "m.pt")
    return write_config(tmp_path, {"m": model_entry(ARCH, "m.pt", init_args=ARGS)})


def test_nothing_serves_before_the_models_load(config: Path) -> None:
    health = Health(create_app(load_config(config)).state.runtime)
    assert health.status("") == NOT_SERVING and health.status("m") == NOT_SERVING
    assert health.status("other") == SERVICE_UNKNOWN


@pytest.mark.anyio
async def test_serving_once_warm_and_not_from_the_start_of_a_drain(config: Path) -> None:
    async with serving(config) as (_, runtime):
        health = Health(runtime)
        assert health.status("") == SERVING and health.status("m") == SERVING
        woken = health._changed
        runtime.draining = True
        runtime.registry.readiness_changed()  # as the lifecycle does when the signal comes
        assert woken.is_set(), "a Watch stream waiting on readiness was not woken"
        assert health.status("") == NOT_SERVING and health.status("m") == NOT_SERVING
