"""Which devices a model's replicas go on, and how many CPU threads each replica may use.

Probing happens when a model is built, never at import.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from service.errors import ConfigError


def resolve_devices(devices: str | Sequence[str]) -> list[torch.device]:
    """``auto``: every visible GPU, else the CPU; ``cpu``; or an explicit list, each checked."""
    if devices == "auto":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [torch.device("cuda", index) for index in range(count)] or [torch.device("cpu")]
    if devices == "cpu":
        return [torch.device("cpu")]
    resolved = [_check_device(name) for name in devices]
    if not resolved:
        raise ConfigError("devices: give 'auto', 'cpu' or a non-empty list such as [cuda:0]")
    return resolved


def _check_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"devices: {name!r} is not a device name (try cpu or cuda:0)") from None
    if device.type == "cuda":
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = 0 if device.index is None else device.index
        if index >= visible:
            raise ConfigError(
                f"devices: {name} is not visible here ({visible} CUDA devices); "
                "use 'auto' to take whatever the machine has"
            )
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise ConfigError(f"devices: {name!r} is not supported; use cpu or cuda:N")
    return device


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
