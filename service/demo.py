"""The built-in demo: a digits classifier and a shapes U-Net, served with no config file.

Their trained checkpoints ship inside the ``models`` package; if they are missing (a trimmed
install), they are trained once into the cache folder, offline, from data that ships with
scikit-learn (digits) or is drawn on the fly (shapes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from models import demo
from service.config import ServeConfig, build_config, cache_dir

log = logging.getLogger(__name__)

# Measured here (docs/benchmark.md): the digits model runs fastest in big batches on one
# single-threaded replica (its event loop needs the other core); the U-Net gains little past
# batches of 4 and takes the CPU default, a replica per core sharing the cores.
_SERVING: dict[str, dict[str, Any]] = {
    "digits": {"batching": {"max_batch_size": 32}, "torch_threads": 1, "cpu_replicas": 1},
    "shapes": {"batching": {"max_batch_size": 4}},
}


def demo_config(environ: Mapping[str, str] | None = None) -> ServeConfig:
    """The demo models' config, with checkpoints made first if they are missing."""
    folder = ensure_demo_checkpoints(environ)
    raw: dict[str, Any] = {
        "default_model": demo.DIGITS.name,
        "checkpoint_root": str(folder),
        "models": {model.name: _model_entry(model) for model in demo.DEMO_MODELS},
    }
    return build_config(raw, base_dir=folder, environ=environ)


def _model_entry(model: demo.DemoModel) -> dict[str, Any]:
    return {
        "task": model.task,
        "architecture": model.architecture,
        "init_args": dict(model.init_args),
        "checkpoint": model.checkpoint_file,
        "input": {
            "size": list(model.size),
            "channels": model.channels,
            "mean": list(model.mean),
            "std": list(model.std),
        },
        "labels": list(model.labels),
        "devices": "auto",
        **_SERVING.get(model.name, {}),
    }


def ensure_demo_checkpoints(environ: Mapping[str, str] | None = None) -> Path:
    """The folder holding every demo checkpoint: the shipped one, else the cache (trained)."""
    if all((demo.CHECKPOINT_DIR / m.checkpoint_file).is_file() for m in demo.DEMO_MODELS):
        return demo.CHECKPOINT_DIR
    folder = cache_dir(environ) / "demo"
    missing = [m for m in demo.DEMO_MODELS if not (folder / m.checkpoint_file).is_file()]
    if missing:
        from models import demo_training  # heavy (scikit-learn): only when training

        folder.mkdir(parents=True, exist_ok=True)
        trainers: dict[str, Callable[..., float]] = {
            demo.DIGITS.name: demo_training.train_digits,
            demo.SHAPES.name: demo_training.train_shapes,
        }
        for model in missing:
            log.warning(
                "demo checkpoint %s is missing: training it into %s (a few minutes)",
                model.checkpoint_file,
                folder,
            )
            trainers[model.name](folder, seed=0)
    return folder
