"""Checkpoints written by the real training tools: dcp.save, FSDP2 on two gloo ranks, sharded
safetensors and .bin with an index, timm-style EMA dicts, AveragedModel, half precision."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from huggingface_hub import save_torch_state_dict
from torch import nn

from service.checkpoints.architecture import build_model
from tests.support.serving import free_port

ARCH = "tests.support.archs:conv_norm"
ARGS: dict[str, Any] = {"in_channels": 1, "num_classes": 3}
SINGLE_PROCESS = "torch.distributed is disabled, unavailable or uninitialized"


def trained(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A seeded model after one Adam step, so the optimizer holds state as large as the model."""
    torch.manual_seed(seed)
    model = build_model(ARCH, ARGS)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    model(torch.randn(4, 1, 16, 16)).square().mean().backward()
    optimizer.step()
    return model.eval(), optimizer


def save_dcp(state: Mapping[str, Any], folder: Path) -> Path:
    """``dcp.save`` in this one process (DCP warns that there is no process group: meant)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=SINGLE_PROCESS, category=UserWarning)
        dcp.save(dict(state), checkpoint_id=folder, no_dist=True)
    return folder


def save_sharded(state_dict: Mapping[str, torch.Tensor], folder: Path, *, kind: str, shards: int = 3) -> Path:
    """Hugging Face's own writer (``huggingface_hub.save_torch_state_dict``): about ``shards``
    files and the index naming each tensor's file; returns the index."""
    folder.mkdir(parents=True, exist_ok=True)
    total = sum(tensor.numel() * tensor.element_size() for tensor in state_dict.values())
    safetensors = kind == "safetensors"
    save_torch_state_dict(
        dict(state_dict), folder, max_shard_size=total // shards + 1, safe_serialization=safetensors
    )
    index = folder / ("model.safetensors.index.json" if safetensors else "pytorch_model.bin.index.json")
    assert index.is_file() and len(list(folder.glob("*-of-*"))) >= 2, "the save must be sharded"
    return index


def rounded(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The same architecture with ``model``'s weights rounded to ``dtype`` and cast back to float32."""
    copy = build_model(ARCH, ARGS)
    copy.load_state_dict({k: v.to(dtype).to(v.dtype) for k, v in model.state_dict().items()})
    return copy.eval()


def fsdp2_save(folder: Path, seed: int, world_size: int = 2) -> nn.Module:
    """FSDP2 (``fully_shard``) on ``world_size`` gloo ranks on the CPU, one Adam step, then
    ``dcp.save`` of ``get_state_dict(model, optim)``; returns the full model (from rank 0)."""
    port = free_port()
    mp.spawn(_fsdp2_rank, args=(world_size, port, str(folder), seed), nprocs=world_size, join=True)
    model = build_model(ARCH, ARGS)
    model.load_state_dict(torch.load(folder.parent / f"{folder.name}.full.pt", weights_only=True))
    return model.eval()


def _fsdp2_rank(rank: int, world_size: int, port: int, folder: str, seed: int) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=_timeout())
    try:
        mesh = init_device_mesh("cpu", (world_size,))
        torch.manual_seed(seed)  # the same initial weights on every rank, as FSDP expects
        model = build_model(ARCH, ARGS)
        for module in (model.stem, model.head):
            fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        torch.manual_seed(100)  # one batch on every rank: BatchNorm buffers are replicated, not reduced
        model(torch.randn(4, 1, 16, 16)).square().mean().backward()
        optimizer.step()
        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=folder)
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            path = Path(folder)
            torch.save(full, path.parent / f"{path.name}.full.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _timeout() -> Any:
    from datetime import timedelta

    return timedelta(seconds=60)
