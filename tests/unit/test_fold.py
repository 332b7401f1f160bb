"""fold_batchnorm: every foldable convolution -> BatchNorm pair folded, nothing else, the
answers unchanged beyond float rounding, the original module untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from service.pipeline.fold import NotTraceable, fold_batchnorm
from tests.support.archs import branching_conv_norm, conv_norm, pooled


def _norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def _model() -> nn.Module:
    torch.manual_seed(0)
    return conv_norm(in_channels=3, num_classes=5, batch_stats=True).eval()


def test_foldable_pairs_are_folded_and_the_answers_kept() -> None:
    model = _model()
    assert model.stem[1].running_mean.abs().max() > 0.1  # drawn statistics: a wrong fold shows
    inputs = torch.randn(4, 3, 20, 20)
    folded = fold_batchnorm(model)
    # stem and residual branch fold; the shared, tapped and batch-statistics ones stay
    assert (_norms(model), _norms(folded)) == (5, 3)
    with torch.inference_mode():
        expected, got = model(inputs), folded(inputs)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        layout = copy.deepcopy(folded).to(memory_format=torch.channels_last)
        torch.testing.assert_close(layout(inputs.to(memory_format=torch.channels_last)), expected)


def test_the_original_module_is_left_as_it_was() -> None:
    model = _model()
    before = copy.deepcopy(model.state_dict())
    fold_batchnorm(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert isinstance(model.stem[1], nn.BatchNorm2d)


def test_a_model_without_a_pair_comes_back_as_it_is() -> None:
    model = pooled().eval()
    assert fold_batchnorm(model) is model


def test_a_model_fx_cannot_trace_is_refused_with_the_reason() -> None:
    with pytest.raises(NotTraceable, match=r"^torch.fx cannot trace its forward \(TraceError: "):
        fold_batchnorm(branching_conv_norm().eval())
