"""Architectures for serving tests, importable by a server subprocess as ``tests.archs:...``."""

from __future__ import annotations

import time

import torch
from torch import nn


class _Pooled(nn.Module):
    """Global-average-pooled pixels into a linear layer: tiny, deterministic, any input size."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(in_channels, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class SlowClassifier(_Pooled):
    """Sleeps ``delay_s`` per batch: makes queues, deadlines and drains observable."""

    def __init__(self, delay_s: float, in_channels: int, num_classes: int) -> None:
        super().__init__(in_channels, num_classes)
        self.delay_s = delay_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay_s)
        return self.head(self.features(x))


class TupleClassifier(_Pooled):
    """A classifier modified to return ``(logits, features)``."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.head(features), features


class FailingOnBright(_Pooled):
    """Raises on batches holding a nearly white image: one bad batch among good ones."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        if bool((features.mean(dim=1) > 0.99).any()):  # white after (x - 0.5) / 0.5
            raise RuntimeError("simulated fault in the model")
        return self.head(features)


def slow_classifier(*, delay_s: float = 0.2, in_channels: int = 1, num_classes: int = 3) -> nn.Module:
    return SlowClassifier(delay_s, in_channels, num_classes)


def tuple_classifier(*, in_channels: int = 3, num_classes: int = 4) -> nn.Module:
    return TupleClassifier(in_channels, num_classes)


def failing_on_bright(*, in_channels: int = 1, num_classes: int = 3) -> nn.Module:
    return FailingOnBright(in_channels, num_classes)
