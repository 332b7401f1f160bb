"""What every checkpoint reader hands the pipeline: the chosen tensors, as saved, and where they came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

CheckpointFormat = Literal["torch", "safetensors", "dcp", "sharded-safetensors", "sharded-torch"]
StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class RawCheckpoint:
    """A checkpoint opened and unwrapped; ``state_dict`` keys are as saved (prefix intact).

    ``entries`` are the state dicts the checkpoint holds under names (e.g. ``state_dict`` and
    ``state_dict_ema``), ``wrapper_key`` the one chosen and ``reason`` why; ``files`` every file
    that belongs to the checkpoint (one for a file, all shards and the index for a folder).
    """

    path: Path
    format: CheckpointFormat
    wrapper_key: str | None
    ignored_keys: tuple[str, ...]
    state_dict: StateDict
    storage_devices: tuple[str, ...]
    entries: tuple[str, ...] = ()
    reason: str = ""
    files: tuple[Path, ...] = ()
