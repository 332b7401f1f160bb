"""U-Net (Ronneberger et al., 2015) assembled from small blocks, sized by a channel list.

Layout (and checkpoint keys): ``encoder`` is an ``nn.ModuleList`` of ``DoubleConv`` then
``depth`` ``Down`` stages; ``decoder`` is an ``nn.ModuleList`` of ``depth`` ``Up`` stages,
deepest first; ``head`` is the 1x1 ``OutConv``. Stage ``i`` has ``base_width * 2**i``
channels, as in segmentation_models_pytorch's decoder built from channel lists.
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DoubleConv", "Down", "OutConv", "UNet", "Up", "unet"]


class DoubleConv(nn.Sequential):
    """(conv3x3 -> BatchNorm -> ReLU) twice; keeps H and W."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)),
                    ("bn1", nn.BatchNorm2d(out_channels)),
                    ("relu1", nn.ReLU(inplace=True)),
                    ("conv2", nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)),
                    ("bn2", nn.BatchNorm2d(out_channels)),
                    ("relu2", nn.ReLU(inplace=True)),
                ]
            )
        )


class Down(nn.Sequential):
    """2x2 max-pool then ``DoubleConv``: halves H and W (rounding down)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            OrderedDict(
                [("pool", nn.MaxPool2d(kernel_size=2)), ("conv", DoubleConv(in_channels, out_channels))]
            )
        )


class Up(nn.Module):
    """Upsample x2, pad to the skip's size, concatenate ``[skip, x]``, then ``DoubleConv``.

    The padding makes odd sizes work: a ``Down`` on 37 rows gives 18, and 18 upsampled is 36,
    one short of the skip; the missing rows and columns are zero-padded (split evenly).
    """

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, bilinear: bool = True
    ) -> None:
        super().__init__()
        self.up: nn.Module
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            up_channels = in_channels
        else:
            self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
            up_channels = out_channels
        self.conv = DoubleConv(up_channels + skip_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)
        dy = skip.shape[-2] - x.shape[-2]
        dx = skip.shape[-1] - x.shape[-1]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        out: Tensor = self.conv(torch.cat([skip, x], dim=1))
        return out


class OutConv(nn.Conv2d):
    """1x1 convolution from features to per-pixel class logits."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(in_channels, num_classes, kernel_size=1)


class UNet(nn.Module):
    """Maps ``(N, in_channels, H, W)`` to ``(N, num_classes, H, W)``; H, W >= 2 ** depth."""

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 3,
        depth: int = 4,
        base_width: int = 16,
        bilinear: bool = True,
    ) -> None:
        super().__init__()
        if depth < 1 or base_width < 1:
            raise ValueError(f"unet needs depth >= 1 and base_width >= 1, got {depth}, {base_width}")
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList(
            [DoubleConv(in_channels, widths[0])] + [Down(widths[i], widths[i + 1]) for i in range(depth)]
        )
        self.decoder = nn.ModuleList(
            Up(widths[i + 1], widths[i], widths[i], bilinear=bilinear) for i in reversed(range(depth))
        )
        self.head = OutConv(widths[0], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        skips: list[Tensor] = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()  # the bottleneck is the decoder's input, not a skip
        for stage in self.decoder:
            x = stage(x, skips.pop())
        out: Tensor = self.head(x)
        return out


def unet(
    *,
    num_classes: int = 2,
    in_channels: int = 3,
    depth: int = 4,
    base_width: int = 16,
    bilinear: bool = True,
) -> UNet:
    """U-Net with ``depth`` down/up stages; ``bilinear=False`` upsamples with ConvTranspose2d."""
    return UNet(
        num_classes=num_classes,
        in_channels=in_channels,
        depth=depth,
        base_width=base_width,
        bilinear=bilinear,
    )
