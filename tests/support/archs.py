"""Architectures for serving tests, importable by a server subprocess as ``tests.support.archs:...``."""

from __future__ import annotations

import asyncio
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


class Doomed(BaseException):
    """Not an ``Exception``: what a careless model (or a library it calls) might raise."""


_BASE_EXCEPTIONS: dict[str, type[BaseException]] = {
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
    "CancelledError": asyncio.CancelledError,
    "Doomed": Doomed,
}


class RaisingOnBright(_Pooled):
    """Raises a ``BaseException`` of the configured kind on batches holding a white image."""

    def __init__(self, kind: str, in_channels: int, num_classes: int) -> None:
        super().__init__(in_channels, num_classes)
        self.kind = _BASE_EXCEPTIONS[kind]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        if bool((features.mean(dim=1) > 0.99).any()):
            raise self.kind("simulated")
        return self.head(features)


class NonFiniteOnBright(_Pooled):
    """Returns NaN logits for batches holding a white image (finite otherwise, so it warms up)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.features(x))
        if bool((self.features(x).mean(dim=1) > 0.99).any()):
            return logits * float("nan")
        return logits


def slow_classifier(*, delay_s: float = 0.2, in_channels: int = 1, num_classes: int = 3) -> nn.Module:
    return SlowClassifier(delay_s, in_channels, num_classes)


def tuple_classifier(*, in_channels: int = 3, num_classes: int = 4) -> nn.Module:
    return TupleClassifier(in_channels, num_classes)


def failing_on_bright(*, in_channels: int = 1, num_classes: int = 3) -> nn.Module:
    return FailingOnBright(in_channels, num_classes)


def raising_on_bright(*, kind: str, in_channels: int = 1, num_classes: int = 3) -> nn.Module:
    return RaisingOnBright(kind, in_channels, num_classes)


def non_finite_on_bright(*, in_channels: int = 1, num_classes: int = 3) -> nn.Module:
    return NonFiniteOnBright(in_channels, num_classes)


class Pooled(_Pooled):
    """The plain pooled classifier: small enough to ``torch.compile`` in a test."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def keep_busy(seconds: float) -> None:
    """Uses this thread's core for ``seconds`` of CPU time (a stand-in for a forward's work)."""
    busy_until = time.thread_time() + seconds
    while time.thread_time() < busy_until:
        pass


class CostlyClassifier(_Pooled):
    """Keeps its thread busy for ``base_s + per_image_s * n + per_image_sq_s * n**2`` for a
    batch of ``n``: a known cost per batch size, so the batch cap it implies is known. Busy,
    not asleep: a batch on one CPU thread is costed by its CPU time."""

    def __init__(
        self, base_s: float, per_image_s: float, per_image_sq_s: float, in_channels: int, num_classes: int
    ) -> None:
        super().__init__(in_channels, num_classes)
        self.cost = (base_s, per_image_s, per_image_sq_s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base_s, per_image_s, per_image_sq_s = self.cost
        size = x.shape[0]
        keep_busy(base_s + per_image_s * size + per_image_sq_s * size**2)
        return self.head(self.features(x))


class HalfRefusing(_Pooled):
    """Fails in float16 as an op without a half kernel on the CPU would (torch's own message)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float16:
            raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'Half'")
        return self.head(self.features(x))


def pooled(*, in_channels: int = 1, num_classes: int = 3) -> nn.Module:
    return Pooled(in_channels, num_classes)


def costly_classifier(
    *,
    base_s: float = 0.0,
    per_image_s: float = 0.0,
    per_image_sq_s: float = 0.0,
    in_channels: int = 1,
    num_classes: int = 3,
) -> nn.Module:
    return CostlyClassifier(base_s, per_image_s, per_image_sq_s, in_channels, num_classes)


def half_refusing(*, in_channels: int = 1, num_classes: int = 3) -> nn.Module:
    return HalfRefusing(in_channels, num_classes)


class ConvNorm(nn.Module):
    """Convolutions and BatchNorms in every arrangement ``fold_batchnorm`` meets: foldable pairs
    (stem, residual branch), a convolution called twice, one whose output is also read past its
    BatchNorm, and (``batch_stats``) a BatchNorm without running statistics, whose answer
    depends on the rest of the batch; the running statistics are drawn (seeded by the caller)
    so a fold that got them wrong would show."""

    def __init__(self, in_channels: int, num_classes: int, batch_stats: bool) -> None:
        super().__init__()
        width = 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.branch_conv = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.branch_norm = nn.BatchNorm2d(width)
        self.shared = nn.Conv2d(width, width, 1)
        self.shared_norm = nn.BatchNorm2d(width)
        self.tapped = nn.Conv2d(width, width, 1)
        self.tapped_norm = nn.BatchNorm2d(width)
        self.batch_stats = nn.Conv2d(width, width, 1)
        self.batch_stats_norm = nn.BatchNorm2d(width, track_running_stats=False) if batch_stats else None
        self.head = nn.Linear(width, num_classes)
        for norm in (self.stem[1], self.branch_norm, self.shared_norm, self.tapped_norm):
            assert isinstance(norm, nn.BatchNorm2d) and norm.running_var is not None
            norm.running_mean.normal_(0.0, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(norm.weight, 1.0, 0.3)
            nn.init.normal_(norm.bias, 0.0, 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.branch_norm(self.branch_conv(x)))
        x = self.shared_norm(self.shared(self.shared(x)))
        tap = self.tapped(x)
        x = self.tapped_norm(tap) + tap
        if self.batch_stats_norm is not None:
            x = self.batch_stats_norm(self.batch_stats(x))
        return self.head(x.mean(dim=(2, 3)))


class BranchingConvNorm(nn.Module):
    """Branches on its data, as torch.fx cannot trace: ``fold_batchnorm`` must refuse it."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        if x.mean() > 0:
            x = -x
        return self.head(x.mean(dim=(2, 3)))


def conv_norm(*, in_channels: int = 1, num_classes: int = 3, batch_stats: bool = False) -> nn.Module:
    return ConvNorm(in_channels, num_classes, batch_stats)


def branching_conv_norm(*, in_channels: int = 1, num_classes: int = 3) -> nn.Module:
    return BranchingConvNorm(in_channels, num_classes)
