"""The baseline model-serve is measured against: a first FastAPI deployment of a model.

One ``async def`` route decodes, runs the forward and postprocesses inline on the event loop,
one request at a time, with no batching, and returns a dict for FastAPI to serialise. It reads
model-serve's own config and uses the server's own decode, normalisation and postprocessing,
so the two differ only in how requests are served, not in the work per image.

    python -m load_tests.naive_server --config CONFIG.yaml --port 8001
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, HTTPException, Request

from service.checkpoints.architecture import build_model
from service.checkpoints.loading import load_weights
from service.config import ModelSpec, ServeConfig, load_config
from service.images.decode import decode_image
from service.pipeline.devices import available_cores
from service.pipeline.replica import DeviceModel
from service.pipeline.tasks import Job, Wants, task_for

CPU = torch.device("cpu")


@dataclass(frozen=True)
class NaiveModel:
    """One model as the naive server holds it: the spec, its CPU model and its version."""

    spec: ModelSpec
    model: DeviceModel
    version: str


def load_model(spec: ModelSpec) -> NaiveModel:
    """Builds and loads the model exactly as model-serve does, on the CPU."""
    module = build_model(spec.architecture, spec.init_args)
    report = load_weights(module, spec.checkpoint, device=CPU, trust_pickle=spec.trust_pickle)
    return NaiveModel(spec, DeviceModel(module, spec, CPU), report.version)


def predict_one(loaded: NaiveModel, body: bytes, top_k: int, max_pixels: int) -> list[dict[str, Any]]:
    """Decode, forward and postprocess one image: the contract's ``predictions`` list."""
    spec = loaded.spec
    jobs = [Job.of_image(decode_image(body, spec.input, max_pixels=max_pixels), Wants(top_k=top_k))]
    with torch.inference_mode():
        task = task_for(spec)
        results = task.postprocess(loaded.model(loaded.model.normalise(jobs[0].pixels[None])), jobs)
    return task.predict_body(results, spec.labels)


def create_app(config: ServeConfig) -> FastAPI:
    """Loads every configured model up front, then serves them from one blocking route."""
    models = {name: load_model(spec) for name, spec in config.models.items()}
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request, model: str | None = None, top_k: int = 5) -> dict[str, Any]:
        name = model or config.default_model_name
        if name not in models:
            raise HTTPException(404, f"unknown model {name!r}")
        loaded = models[name]
        torch.set_num_threads(loaded.spec.torch_threads or config.server.torch_threads or available_cores())
        predictions = predict_one(loaded, await request.body(), top_k, config.server.max_image_pixels)
        return {
            "model": name,
            "version": loaded.version,
            "task": loaded.spec.task,
            "predictions": predictions,
        }

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Serves on one uvicorn process with model-serve's torch thread count and no access log."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    config = load_config(args.config)  # with MODEL_SERVE_* overrides, like model-serve
    torch.set_num_threads(config.server.torch_threads or available_cores())
    uvicorn.run(create_app(config), host=args.host, port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
