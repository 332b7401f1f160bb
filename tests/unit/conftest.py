"""Shared fixtures for the checkpoint, architecture and inspection tests: a tiny user model."""

from __future__ import annotations

import os
import pickle
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from service.checkpoints.architecture import build_model

# The test model lives in "user code": a module written to a temporary folder on sys.path,
# built through the same "module:callable" spec a config would use.
NET_SOURCE = """
from collections import OrderedDict

from torch import nn


def make_net(num_classes: int = 3) -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(1, 4, 3),
        bn=nn.BatchNorm2d(4),
        relu=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(2),
        flat=nn.Flatten(),
        drop=nn.Dropout(0.5),
        fc=nn.Linear(16, num_classes),
    ))
"""

NetFactory = Callable[..., nn.Module]


class Malicious:
    """Unpickling this runs ``touch marker``: the checkpoint pipeline must never do that."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def net_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``"usernet_<random>:make_net"``, importable for the duration of one test."""
    name = f"usernet_{uuid.uuid4().hex[:12]}"
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / f"{name}.py").write_text(NET_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    yield f"{name}:make_net"
    sys.modules.pop(name, None)


@pytest.fixture
def make_net(net_spec: str) -> NetFactory:
    """A seeded net whose BatchNorm running stats are no longer the defaults."""

    def make(seed: int, num_classes: int = 3) -> nn.Module:
        torch.manual_seed(seed)
        model = build_model(net_spec, {"num_classes": num_classes})
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(8, 1, 8, 8) * 2 + 1)
        return model.eval()

    return make


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def tagged_save(monkeypatch: pytest.MonkeyPatch) -> Callable[[object, Path, str], None]:
    """``torch.save`` as if every storage lived on ``tag`` (e.g. "cuda:1"), without that device."""

    def save(obj: object, path: Path, tag: str) -> None:
        with monkeypatch.context() as patch:
            # torch.save asks torch.serialization.location_tag for each storage's tag
            patch.setattr(torch.serialization, "location_tag", lambda storage: tag)
            torch.save(obj, path)

    return save


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    """The file a malicious pickle would create; asserted absent after every test using it."""
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a malicious pickle ran code"


@pytest.fixture
def malicious_torch(tmp_path: Path, marker: Path) -> Path:
    """A torch.save file that runs code when fully unpickled."""
    path = tmp_path / "malicious.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Malicious(marker)}, path)
    return path


@pytest.fixture
def malicious_pickle(tmp_path: Path, marker: Path) -> Path:
    """A plain ``pickle.dump`` file that runs code when unpickled."""
    path = tmp_path / "malicious.pkl"
    path.write_bytes(pickle.dumps(Malicious(marker)))
    return path
