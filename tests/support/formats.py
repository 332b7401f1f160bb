"""Each checkpoint format written under a root, with the model whose answers it must serve."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from tests.support.training import rounded, save_dcp, save_sharded, trained

Writer = Callable[[Path], tuple[str, nn.Module]]
"""Writes a checkpoint under the root; returns its path (relative to the root) and the reference."""


def dcp_folder(root: Path) -> tuple[str, nn.Module]:
    model, optimizer = trained(seed=1)
    save_dcp({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, root / "dcp")
    return "dcp", model


def _titan(root: Path) -> tuple[str, nn.Module]:
    model, optimizer = trained(seed=2)
    save_dcp({**model.state_dict(), "optimizer": optimizer.state_dict()}, root / "titan")
    return "titan", model


def _safetensors_index(root: Path) -> tuple[str, nn.Module]:
    model, _ = trained(seed=3)
    return str(save_sharded(model.state_dict(), root / "st", kind="safetensors").relative_to(root)), model


def _bin_folder(root: Path) -> tuple[str, nn.Module]:
    model, _ = trained(seed=4)
    save_sharded(model.state_dict(), root / "bin", kind="bin")
    return "bin", model


def timm_file(root: Path, serves: str) -> tuple[str, nn.Module]:
    model, _ = trained(seed=5)
    ema, _ = trained(seed=6)
    args = argparse.Namespace(model="conv_norm", lr=0.01)
    state = {"epoch": 9, "state_dict": model.state_dict(), "state_dict_ema": ema.state_dict(), "args": args}
    torch.save(state, root / "timm.pth")
    return "timm.pth", ema if serves == "ema" else model


def _averaged(root: Path) -> tuple[str, nn.Module]:
    model, _ = trained(seed=7)
    averaged = AveragedModel(model)
    model.load_state_dict(trained(seed=8)[0].state_dict())
    averaged.update_parameters(model)
    torch.save(averaged.state_dict(), root / "swa.pt")
    return "swa.pt", averaged.module


def _half(root: Path, dtype: torch.dtype) -> tuple[str, nn.Module]:
    model, _ = trained(seed=9)
    half = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    name = str(dtype).removeprefix("torch.")
    if dtype == torch.float16:
        torch.save(half, root / f"{name}.pt")
        return f"{name}.pt", rounded(model, dtype)
    return str(save_sharded(half, root / name, kind="safetensors").relative_to(root)), rounded(model, dtype)


FORMATS: dict[str, tuple[Writer, dict[str, Any]]] = {
    "dcp": (dcp_folder, {}),
    "titan": (_titan, {}),
    "safetensors-index": (_safetensors_index, {}),
    "bin-folder": (_bin_folder, {}),
    "ema": (lambda root: timm_file(root, "ema"), {}),
    "picked": (lambda root: timm_file(root, "trained"), {"state_dict_key": "state_dict"}),
    "averaged": (_averaged, {}),
    "float16": (lambda root: _half(root, torch.float16), {}),
    "bfloat16": (lambda root: _half(root, torch.bfloat16), {}),
}
