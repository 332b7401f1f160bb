"""Configs written to disk for a test, and the app run in-process over ASGI (fast layer)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
import yaml
from PIL import Image

from service.app import create_app
from service.checkpoints.architecture import build_model
from service.config import ServeConfig, load_config
from service.pipeline.runtime import Runtime
from tests.support.waiting import await_until

ADMIN = {"Authorization": "Bearer test-token"}


def save_random_weights(
    architecture: str, init_args: Mapping[str, Any], path: Path, seed: int = 0
) -> torch.nn.Module:
    """A seeded model of ``architecture``, its state_dict saved by ``torch.save`` at ``path``."""
    torch.manual_seed(seed)
    model = build_model(architecture, init_args).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def write_config(folder: Path, models: Mapping[str, Mapping[str, Any]], **top: Any) -> Path:
    """A YAML config in ``folder`` (checkpoint paths relative to it), admin token set."""
    raw = {"checkpoint_root": ".", **top, "models": dict(models)}
    server = raw.setdefault("server", {})
    server["admin_token"] = ADMIN["Authorization"].split()[1]
    server.setdefault("grpc_port", None)  # in-process apps: no gRPC port (real servers get a free one)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def model_entry(architecture: str, checkpoint: str, **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "architecture": architecture,
        "checkpoint": checkpoint,
        "input": {"size": [16, 16], "channels": 1, "mean": [0.5], "std": [0.5]},
        "devices": "cpu",
    }
    entry.update(overrides)
    return entry


def png(value: int | None = None, size: tuple[int, int] = (20, 20), mode: str = "L", seed: int = 0) -> bytes:
    """A PNG of one grey ``value``, or seeded noise when ``value`` is None."""
    if value is None:
        channels = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
        array = np.random.default_rng(seed).integers(0, 256, channels, dtype=np.uint8)
        image = Image.fromarray(array)
    else:
        image = Image.new(mode, size, value if mode == "L" else (value,) * 3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _started(runtime: Runtime) -> bool:
    """Whether every model loaded; a failed start is raised rather than waited out."""
    if runtime.startup_error is not None:
        raise runtime.startup_error
    return runtime.registry.ready


@asynccontextmanager
async def serving(config: ServeConfig | Path) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    """The app with its lifespan running and every model warm, behind an ASGI client."""
    if isinstance(config, Path):
        config = load_config(config)
    app = create_app(config)
    runtime: Runtime = app.state.runtime
    async with app.router.lifespan_context(app):
        await await_until(lambda: _started(runtime), 120, "the models loaded", poll_s=0.01)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://model-serve") as client:
            yield client, runtime
