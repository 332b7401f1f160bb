"""build_model: "module:callable" specs from torchvision or the user's own code, and clear errors."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from service.checkpoints.architecture import build_model
from service.errors import ConfigError

USER_SOURCE = """
from torch import nn

NOT_CALLABLE = 42


class Zoo:
    @staticmethod
    def tiny(width: int = 2) -> nn.Module:
        return nn.Linear(width, 1)


def not_a_model() -> int:
    return 7


def fails(num_classes: int) -> nn.Module:
    raise ValueError(f"num_classes must be positive, got {num_classes}")
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The name of a module in a temporary folder on sys.path: the user's own code."""
    name = f"user_models_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(USER_SOURCE)
    (tmp_path / f"{name}_broken.py").write_text("import not_installed_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for module in (name, f"{name}_broken"):
        sys.modules.pop(module, None)


def test_torchvision_resnet18_with_init_args() -> None:
    head = build_model("torchvision.models:resnet18", {"num_classes": 7}).get_submodule("fc")
    assert isinstance(head, nn.Linear)
    assert head.out_features == 7


def test_a_class_is_a_callable_too() -> None:
    model = build_model("torch.nn:Linear", {"in_features": 3, "out_features": 2})
    assert isinstance(model, nn.Linear)
    assert model.weight.shape == (2, 3)


def test_user_code_on_sys_path(net_spec: str) -> None:
    assert build_model(net_spec, {"num_classes": 4}).get_submodule("fc").out_features == 4
    assert build_model(net_spec).get_submodule("fc").out_features == 3  # the default


def test_dotted_attribute_path(user_module: str) -> None:
    model = build_model(f"{user_module}:Zoo.tiny", {"width": 5})
    assert isinstance(model, nn.Linear)
    assert model.in_features == 5


@pytest.mark.parametrize(
    ("spec", "init_args", "expected"),
    [
        ("torchvision.models.resnet18", None, "must look like 'importable.module:callable'"),
        ("torchvision.models:", None, "must look like"),
        (":resnet18", None, "must look like"),
        ("torchvision models:resnet18", None, "must look like"),
        (
            "no_such_package_xyz.models:net",
            None,
            "cannot import module 'no_such_package_xyz.models'.*PYTHONPATH",
        ),
        ("{user}_broken:net", None, "'not_installed_dependency_xyz' is not installed"),
        ("{user}:missing", None, "'{user}' has no attribute 'missing'"),
        ("{user}:Zoo.huge", None, "'{user}.Zoo' has no attribute 'huge'"),
        ("{user}:NOT_CALLABLE", None, "is a int, not a callable"),
        ("{user}:Zoo.tiny", {"depth": 3}, "does not accept init_args.*unexpected keyword.*depth"),
        ("{user}:not_a_model", None, "returned a int, not a torch.nn.Module"),
        ("{user}:fails", {"num_classes": -1}, "ValueError: num_classes must be positive, got -1"),
    ],
)
def test_errors_say_what_to_fix(
    spec: str, init_args: dict[str, Any] | None, expected: str, user_module: str
) -> None:
    with pytest.raises(ConfigError, match=expected.replace("{user}", user_module)) as caught:
        build_model(spec.replace("{user}", user_module), init_args)
    assert spec.replace("{user}", user_module) in caught.value.message
