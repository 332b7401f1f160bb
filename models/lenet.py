"""LeNet-5 (LeCun et al., 1998) for 32x32 inputs, as two named ``nn.Sequential`` stages.

The layer names below are checkpoint keys (``features.conv1.weight``, ``classifier.fc3.bias``):
once a checkpoint ships they are frozen.
"""

from collections import OrderedDict

import torch
from torch import Tensor, nn

__all__ = ["LeNet", "lenet"]


class LeNet(nn.Module):
    """Maps ``(N, in_channels, 32, 32)`` images to ``(N, num_classes)`` logits."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(in_channels, 6, kernel_size=5)),
                    ("relu1", nn.ReLU(inplace=True)),
                    ("pool1", nn.MaxPool2d(kernel_size=2)),
                    ("conv2", nn.Conv2d(6, 16, kernel_size=5)),
                    ("relu2", nn.ReLU(inplace=True)),
                    ("pool2", nn.MaxPool2d(kernel_size=2)),
                ]
            )
        )
        # 32x32 -> conv5 -> 28 -> pool -> 14 -> conv5 -> 10 -> pool -> 5: a 16x5x5 feature map.
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc1", nn.Linear(16 * 5 * 5, 120)),
                    ("relu3", nn.ReLU(inplace=True)),
                    ("fc2", nn.Linear(120, 84)),
                    ("relu4", nn.ReLU(inplace=True)),
                    ("fc3", nn.Linear(84, num_classes)),
                ]
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.classifier(torch.flatten(self.features(x), 1))
        return out


def lenet(*, num_classes: int = 10, in_channels: int = 1) -> LeNet:
    """LeNet-5 for 32x32 inputs; other sizes fail in ``classifier.fc1`` with a shape error."""
    return LeNet(num_classes=num_classes, in_channels=in_channels)
