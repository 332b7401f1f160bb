"""A two-branch classifier routed through an ``nn.ModuleDict``.

``local`` sees fine detail (3x3 convolutions at full resolution), ``context`` sees a wider
field (dilated convolutions on a downsampled input); their pooled features are concatenated
into ``head``. Keys are ``branches.local.*``, ``branches.context.*`` and ``head.*``.
"""

from collections import OrderedDict

import torch
from torch import Tensor, nn

__all__ = ["TwoBranchNet", "two_branch"]

_WIDTH = 32


def _local(in_channels: int) -> nn.Sequential:
    """Two 3x3 convolutions at full resolution, globally average-pooled to ``_WIDTH`` features."""
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(in_channels, _WIDTH, 3, padding=1)),
                ("relu1", nn.ReLU(inplace=True)),
                ("conv2", nn.Conv2d(_WIDTH, _WIDTH, 3, padding=1)),
                ("relu2", nn.ReLU(inplace=True)),
                ("pool", nn.AdaptiveAvgPool2d(1)),
                ("flatten", nn.Flatten()),
            ]
        )
    )


def _context(in_channels: int) -> nn.Sequential:
    """Downsample, then dilated 3x3 convolutions: a wide receptive field for few parameters."""
    return nn.Sequential(
        OrderedDict(
            [
                ("down", nn.AvgPool2d(kernel_size=2)),
                ("conv1", nn.Conv2d(in_channels, _WIDTH, 3, padding=2, dilation=2)),
                ("relu1", nn.ReLU(inplace=True)),
                ("conv2", nn.Conv2d(_WIDTH, _WIDTH, 3, padding=4, dilation=4)),
                ("relu2", nn.ReLU(inplace=True)),
                ("pool", nn.AdaptiveAvgPool2d(1)),
                ("flatten", nn.Flatten()),
            ]
        )
    )


class TwoBranchNet(nn.Module):
    """Maps ``(N, in_channels, H, W)``, H and W at least 2, to ``(N, num_classes)`` logits."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.branches = nn.ModuleDict({"local": _local(in_channels), "context": _context(in_channels)})
        self.head = nn.Sequential(
            OrderedDict(
                [
                    ("fc1", nn.Linear(_WIDTH * len(self.branches), 64)),
                    ("relu", nn.ReLU(inplace=True)),
                    ("fc2", nn.Linear(64, num_classes)),
                ]
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        # ModuleDict keeps insertion order, so the concatenation order is fixed: local, context.
        features = torch.cat([branch(x) for branch in self.branches.values()], dim=1)
        out: Tensor = self.head(features)
        return out


def two_branch(*, num_classes: int = 10, in_channels: int = 3) -> TwoBranchNet:
    """Two named branches (``local``, ``context``) whose features feed one linear head."""
    return TwoBranchNet(num_classes=num_classes, in_channels=in_channels)
