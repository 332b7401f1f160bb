"""The committed demo checkpoints: strict loads, sizes, and held-out targets (no training)."""

import importlib

import pytest
import torch
from safetensors.torch import load_file

from models.demo import CHECKPOINT_DIR, DEMO_MODELS, DIGITS, SHAPES, DemoModel
from models.demo_training import (
    DIGITS_TARGET_ACCURACY,
    SHAPES_TARGET_MIOU,
    evaluate_digits,
    evaluate_shapes,
    load_demo_model,
)

_MAX_TOTAL_BYTES = 3 * 1024 * 1024

demos = pytest.mark.parametrize("demo", DEMO_MODELS, ids=[demo.name for demo in DEMO_MODELS])


@demos
def test_demo_model_is_consistent(demo: DemoModel) -> None:
    module, _, name = demo.architecture.partition(":")
    assert callable(getattr(importlib.import_module(module), name))
    assert demo.init_args["num_classes"] == len(demo.labels)
    assert demo.init_args["in_channels"] == demo.channels == len(demo.mean) == len(demo.std)
    assert demo.task in {"classification", "segmentation"}


@demos
def test_checkpoint_is_fp32_and_loads_strictly(demo: DemoModel) -> None:
    tensors = load_file(CHECKPOINT_DIR / demo.checkpoint_file)
    assert {t.dtype for key, t in tensors.items() if "num_batches_tracked" not in key} == {torch.float32}
    model = load_demo_model(demo)  # strict=True: raises on any missing or unexpected key
    assert not model.training
    assert tensors.keys() == model.state_dict().keys()


def test_checkpoints_stay_small() -> None:
    total = sum((CHECKPOINT_DIR / demo.checkpoint_file).stat().st_size for demo in DEMO_MODELS)
    assert total < _MAX_TOTAL_BYTES


def test_digits_reaches_its_held_out_accuracy() -> None:
    assert evaluate_digits(load_demo_model(DIGITS)) >= DIGITS_TARGET_ACCURACY


def test_shapes_reaches_its_held_out_mean_iou() -> None:
    assert evaluate_shapes(load_demo_model(SHAPES)) >= SHAPES_TARGET_MIOU
