"""A plain CNN whose stages are an ``nn.ModuleList`` built from a list of widths.

Keys are ``stages.{i}.conv.weight`` ... ``head.fc.weight``: adding a width adds a stage
without renaming the others.
"""

from collections import OrderedDict
from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn

__all__ = ["StackedCNN", "stacked_cnn"]


def _stage(in_channels: int, out_channels: int) -> nn.Sequential:
    """conv3x3 -> BatchNorm -> ReLU -> 2x2 max-pool: halves H and W."""
    return nn.Sequential(
        OrderedDict(
            [
                ("conv", nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)),
                ("bn", nn.BatchNorm2d(out_channels)),
                ("relu", nn.ReLU(inplace=True)),
                ("pool", nn.MaxPool2d(kernel_size=2)),
            ]
        )
    )


class StackedCNN(nn.Module):
    """Maps ``(N, in_channels, H, W)`` to ``(N, num_classes)``; H, W >= 2 ** len(widths)."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, widths: Sequence[int] = (16, 32, 64)
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("stacked_cnn needs at least one width in `widths`")
        channels = [in_channels, *widths]
        self.stages = nn.ModuleList(_stage(c_in, c_out) for c_in, c_out in pairwise(channels))
        self.head = nn.Sequential(
            OrderedDict(
                [
                    ("pool", nn.AdaptiveAvgPool2d(1)),
                    ("flatten", nn.Flatten()),
                    ("fc", nn.Linear(widths[-1], num_classes)),
                ]
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        out: Tensor = self.head(x)
        return out


def stacked_cnn(
    *, num_classes: int = 10, in_channels: int = 3, widths: Sequence[int] = (16, 32, 64)
) -> StackedCNN:
    """One conv stage per entry of ``widths``, then global average pooling and a linear head."""
    return StackedCNN(num_classes=num_classes, in_channels=in_channels, widths=tuple(widths))
