"""An AlexNet-style classifier (Krizhevsky et al., 2012) scaled down for small inputs.

torchvision's layout (``features`` / ``avgpool`` / ``classifier``) with 3x3 convolutions and
narrower layers, so 32x32 images are not pooled away. Layer names are checkpoint keys.
"""

from collections import OrderedDict

import torch
from torch import Tensor, nn

__all__ = ["AlexNet", "alexnet"]

# (out_channels, pool after this conv) per convolution, as in AlexNet's five conv layers.
_CONVS: tuple[tuple[int, bool], ...] = ((32, True), (96, True), (192, False), (128, False), (128, True))
_POOLED_SIZE = 3
_HIDDEN = 512


def _features(in_channels: int, batch_norm: bool) -> nn.Sequential:
    """conv{i} [bn{i}] relu{i} [pool{i}] for each conv; BatchNorm makes the conv bias redundant."""
    layers: list[tuple[str, nn.Module]] = []
    channels = in_channels
    for i, (width, pool) in enumerate(_CONVS, start=1):
        layers.append((f"conv{i}", nn.Conv2d(channels, width, 3, padding=1, bias=not batch_norm)))
        if batch_norm:
            layers.append((f"bn{i}", nn.BatchNorm2d(width)))
        layers.append((f"relu{i}", nn.ReLU(inplace=True)))
        if pool:
            layers.append((f"pool{i}", nn.MaxPool2d(kernel_size=2)))
        channels = width
    return nn.Sequential(OrderedDict(layers))


class AlexNet(nn.Module):
    """Maps ``(N, in_channels, H, W)`` images, H and W at least 8, to ``(N, num_classes)``."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.5,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.features = _features(in_channels, batch_norm)
        # Fixed pooled size makes the classifier independent of the input size.
        self.avgpool = nn.AdaptiveAvgPool2d((_POOLED_SIZE, _POOLED_SIZE))
        flat = _CONVS[-1][0] * _POOLED_SIZE * _POOLED_SIZE
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("drop1", nn.Dropout(p=dropout)),
                    ("fc1", nn.Linear(flat, _HIDDEN)),
                    ("relu1", nn.ReLU(inplace=True)),
                    ("drop2", nn.Dropout(p=dropout)),
                    ("fc2", nn.Linear(_HIDDEN, _HIDDEN)),
                    ("relu2", nn.ReLU(inplace=True)),
                    ("fc3", nn.Linear(_HIDDEN, num_classes)),
                ]
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        out: Tensor = self.classifier(x)
        return out


def alexnet(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    dropout: float = 0.5,
    batch_norm: bool = False,
) -> AlexNet:
    """Small-input AlexNet; ``batch_norm=True`` adds ``features.bn{i}`` after each conv."""
    return AlexNet(num_classes=num_classes, in_channels=in_channels, dropout=dropout, batch_norm=batch_norm)
