"""Hugging Face sharded checkpoints: an index whose ``weight_map`` names each tensor's shard.

Safetensors shards are read lazily (``safe_open``, one tensor at a time) and ``.bin`` shards
with ``torch.load(mmap=True, weights_only=True)``, so no shard is ever held whole in memory
beside its tensors: peak memory at load stays near the model's own size. Every shard is checked
before it is opened (a safetensors header against the file size, a torch zip's CRC-32s), and a
shard the index names but the folder lacks is refused by name.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import safe_open

from service.checkpoints.files import check_safetensors_file, check_torch_zip_file, file_identity
from service.checkpoints.layout import Layout, index_weight_map
from service.checkpoints.raw import RawCheckpoint, StateDict
from service.errors import CheckpointError


def read_index(layout: Layout, *, trust_pickle: bool = False) -> RawCheckpoint:
    """Every tensor the index names, from its shard, on the CPU; keys as saved."""
    weight_map = index_weight_map(layout.main)
    if not weight_map:
        raise CheckpointError(f"checkpoint index {layout.main} names no tensors (empty weight_map)")
    shards: dict[str, list[str]] = {}
    for key, shard in weight_map.items():
        shards.setdefault(shard, []).append(key)
    kinds = {name.endswith(".safetensors") for name in shards}
    if len(kinds) > 1:
        raise CheckpointError(f"{layout.main} mixes safetensors and torch shards; expected one kind")
    safetensors = kinds == {True}
    state_dict: StateDict = {}
    for name, keys in shards.items():
        path = layout.folder / name
        if file_identity(path) is None:
            raise CheckpointError(
                f"shard {name} named by {layout.main.name} is missing from {layout.folder} (or is "
                "not a regular file); copy every shard the index names"
            )
        read = _safetensors_shard if safetensors else _torch_shard
        state_dict.update(read(path, keys, trust_pickle))
    files = (layout.main, *(layout.folder / name for name in sorted(shards)))
    return RawCheckpoint(
        path=layout.path,
        format="sharded-safetensors" if safetensors else "sharded-torch",
        wrapper_key=None,
        ignored_keys=(),
        state_dict=state_dict,
        storage_devices=("cpu",),
        reason=f"{len(weight_map)} tensors in {len(shards)} shards, as {layout.main.name} maps them",
        files=files,
    )


def _safetensors_shard(path: Path, keys: list[str], trust_pickle: bool) -> StateDict:
    check_safetensors_file(path)
    try:
        with safe_open(str(path), framework="pt") as shard:
            held = set(shard.keys())
            _check_holds(path, keys, held)
            return {key: shard.get_tensor(key) for key in keys}
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises its own error types for bad files
        raise CheckpointError(f"cannot read shard {path} as safetensors: {exc}") from exc


def _torch_shard(path: Path, keys: list[str], trust_pickle: bool) -> StateDict:
    check_torch_zip_file(path)
    try:
        loaded = _load_mapped(path, weights_only=True)
    except pickle.UnpicklingError:
        if not trust_pickle:
            raise CheckpointError(
                f"shard {path} needs arbitrary unpickling, which can run any code, so it was refused "
                "(weights_only=True); set `trust_pickle: true` only if you trust the file"
            ) from None
        loaded = _load_mapped(path, weights_only=False)
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"shard {path} holds a {type(loaded).__name__}, not a dict of tensors")
    _check_holds(path, keys, set(loaded))
    return {key: loaded[key] for key in keys}


def _load_mapped(path: Path, *, weights_only: bool) -> object:
    """``torch.load`` with ``mmap``: tensors stay in the page cache until copied into the model."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=weights_only)
    except pickle.UnpicklingError:
        raise
    except Exception as exc:  # torch.load raises many types for corrupt or truncated files
        raise CheckpointError(f"cannot read shard {path} as a torch checkpoint: {exc}") from exc


def _check_holds(path: Path, keys: list[str], held: set[str]) -> None:
    absent = [key for key in keys if key not in held]
    if absent:
        raise CheckpointError(
            f"shard {path.name} lacks {len(absent)} tensors its index names (e.g. {absent[0]!r}); "
            "the index and the shards are from different saves"
        )
