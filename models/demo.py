"""The two built-in demo models, as plain constants the server turns into its demo config.

``models.demo_training`` trains exactly these; the server serves them with the contract's
preprocessing (convert to ``channels``, stretch to ``size`` with bilinear resampling, scale to
[0, 1], normalise with ``mean`` and ``std``), the same pipeline the trainer feeds the models.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = ["CHECKPOINT_DIR", "DEMO_MODELS", "DIGITS", "SAMPLES_DIR", "SHAPES", "DemoModel"]

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
SAMPLES_DIR = Path(__file__).parent / "samples"


@dataclass(frozen=True)
class DemoModel:
    """One demo model: architecture, input contract, labels and checkpoint file name."""

    name: str
    task: str  # "classification" | "segmentation"
    architecture: str  # "module:callable", e.g. "models.lenet:lenet"
    init_args: Mapping[str, Any] = field(hash=False)  # keyword arguments for the callable
    size: tuple[int, int]  # [H, W] model input
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: tuple[str, ...]
    checkpoint_file: str  # file name inside CHECKPOINT_DIR


DIGITS = DemoModel(
    name="digits",
    task="classification",
    architecture="models.lenet:lenet",
    init_args=MappingProxyType({"num_classes": 10, "in_channels": 1}),
    size=(32, 32),
    channels=1,
    mean=(0.5,),
    std=(0.5,),
    labels=tuple(str(digit) for digit in range(10)),
    checkpoint_file="digits.safetensors",
)

SHAPES = DemoModel(
    name="shapes",
    task="segmentation",
    architecture="models.unet:unet",
    init_args=MappingProxyType(
        {"num_classes": 4, "in_channels": 3, "depth": 4, "base_width": 8, "bilinear": True}
    ),
    size=(64, 64),
    channels=3,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    labels=("background", "circle", "square", "triangle"),
    checkpoint_file="shapes.safetensors",
)

DEMO_MODELS: tuple[DemoModel, ...] = (DIGITS, SHAPES)
