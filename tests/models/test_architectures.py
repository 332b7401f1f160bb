"""Every architecture x device: output shapes, checkpoint keys, strict save/reload round trip."""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from models.alexnet import alexnet
from models.branched import two_branch
from models.lenet import lenet
from models.stacked import stacked_cnn
from models.unet import unet

_BATCH = 3


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]  # (C, H, W)
    output_shape: tuple[int, ...]  # per sample
    keys: frozenset[str]  # some state_dict keys that checkpoints rely on


CASES = {
    "lenet": Case(
        partial(lenet, num_classes=10),
        (1, 32, 32),
        (10,),
        frozenset({"features.conv1.weight", "features.conv2.bias", "classifier.fc3.weight"}),
    ),
    "lenet_rgb": Case(partial(lenet, num_classes=4, in_channels=3), (3, 32, 32), (4,), frozenset()),
    "alexnet": Case(
        partial(alexnet, num_classes=7),
        (3, 32, 32),
        (7,),
        frozenset({"features.conv1.weight", "features.conv5.bias", "classifier.fc3.weight"}),
    ),
    "alexnet_bn": Case(
        partial(alexnet, num_classes=5, in_channels=1, batch_norm=True),
        (1, 24, 40),
        (5,),
        frozenset({"features.bn1.running_mean", "features.bn5.num_batches_tracked"}),
    ),
    "stacked_cnn": Case(
        partial(stacked_cnn, num_classes=6, widths=(8, 16, 24, 32)),
        (3, 32, 32),
        (6,),
        frozenset({"stages.0.conv.weight", "stages.3.bn.running_var", "head.fc.weight"}),
    ),
    "two_branch": Case(
        partial(two_branch, num_classes=4),
        (3, 28, 36),
        (4,),
        frozenset({"branches.local.conv1.weight", "branches.context.conv2.bias", "head.fc2.bias"}),
    ),
    "unet_bilinear": Case(
        partial(unet, num_classes=3, depth=3, base_width=8),
        (3, 40, 48),
        (3, 40, 48),
        frozenset(
            {
                "encoder.0.conv1.weight",
                "encoder.3.conv.bn2.running_mean",
                "decoder.2.conv.conv2.weight",
                "head.weight",
            }
        ),
    ),
    "unet_transposed": Case(
        partial(unet, num_classes=2, in_channels=1, depth=2, base_width=4, bilinear=False),
        (1, 32, 32),
        (2, 32, 32),
        frozenset({"decoder.0.up.weight", "decoder.1.up.bias", "head.bias"}),
    ),
}

pytestmark = pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())


def _batch(case: Case, device: str) -> Tensor:
    return torch.randn(_BATCH, *case.input_shape, device=device)


def _assert_same(actual: Tensor, expected: Tensor) -> None:
    """Bitwise on cpu; on CUDA, kernels may be picked per call, so float tolerance."""
    if actual.device.type == "cpu":
        assert torch.equal(actual, expected)
    else:
        torch.testing.assert_close(actual, expected)


def test_forward_gives_the_documented_shape(case: Case, device: str) -> None:
    model = case.build().to(device)
    out = model(_batch(case, device))
    assert out.shape == (_BATCH, *case.output_shape)
    assert out.device == torch.device(device)
    assert torch.isfinite(out).all()


def test_checkpoint_keys_are_stable(case: Case) -> None:
    assert case.keys <= case.build().state_dict().keys()


def test_saved_state_dict_reloads_strictly_with_equal_outputs(
    case: Case, device: str, tmp_path: Path
) -> None:
    model = case.build().to(device)
    x = _batch(case, device)
    with torch.no_grad():
        model.train()(x)  # moves BatchNorm running statistics off their defaults
        expected = model.eval()(x)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)

    fresh = case.build().to(device).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(x), expected)
        result = fresh.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        assert not result.missing_keys and not result.unexpected_keys
        _assert_same(fresh(x), expected)
