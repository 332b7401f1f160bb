"""U-Net specifics: any input size (odd ones too) comes back at that size; size knobs work."""

import pytest
import torch

from models.unet import unet


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("bilinear", [True, False], ids=["bilinear", "transposed"])
@pytest.mark.parametrize(("height", "width", "depth"), [(37, 53, 4), (65, 33, 3), (17, 16, 4)])
def test_output_has_the_input_size(bilinear: bool, height: int, width: int, depth: int) -> None:
    model = unet(num_classes=5, depth=depth, base_width=4, bilinear=bilinear).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, height, width))
    assert out.shape == (2, 5, height, width)


def test_stages_follow_depth() -> None:
    model = unet(depth=3, base_width=4)
    assert len(model.encoder) == 4
    assert len(model.decoder) == 3


def test_depth_and_base_width_change_the_parameter_count() -> None:
    small = _parameters(unet(depth=2, base_width=8))
    assert small < _parameters(unet(depth=3, base_width=8)) < _parameters(unet(depth=4, base_width=8))
    assert small < _parameters(unet(depth=2, base_width=16))
    assert _parameters(unet(bilinear=False)) != _parameters(unet(bilinear=True))


@pytest.mark.parametrize("kwargs", [{"depth": 0}, {"base_width": 0}])
def test_rejects_empty_networks(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="depth >= 1"):
        unet(**kwargs)
