"""Which of a checkpoint's named state dicts serves: the averaged (EMA) one, a wrapper, or the one asked for.

Training stacks keep several state dicts in one checkpoint: timm writes ``state_dict`` and
``state_dict_ema``, Lightning callbacks and hand-written loops ``model_ema``, ``ema`` or
``ema_state_dict`` beside ``model``; the averaged weights are the ones meant for serving, so they
win unless the model's ``state_dict_key`` names another entry.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from service.checkpoints.raw import CheckpointFormat, RawCheckpoint, StateDict
from service.errors import CheckpointError

EMA_KEYS = ("state_dict_ema", "model_ema", "ema_state_dict", "ema")
"""Entries holding averaged weights, in the order they are preferred."""
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
"""Keys under which training scripts nest the trained state dict, in the order they are preferred."""
ENTRY_KEYS = EMA_KEYS + WRAPPER_KEYS
AVERAGED_COUNT = "n_averaged"  # torch.optim.swa_utils.AveragedModel's own buffer


def choose_entry(
    found: Sequence[str], requested: str | None, path: Path, top_keys: Sequence[str]
) -> tuple[str, str]:
    """The entry of ``found`` (names of state dicts) that serves and why; ``requested`` must be one of them.

    Raises ``CheckpointError`` listing the entries when ``requested`` is absent or nothing can
    be told apart (several unnamed dicts of tensors).
    """
    if requested is not None:
        if requested not in found:
            raise CheckpointError(
                f"state_dict_key {requested!r} is not an entry of {path}; its entries holding "
                f"tensors are: {_names(found) or 'none'} (top-level keys: {_names(top_keys)})"
            )
        return requested, f"state_dict_key names it (entries: {_names(found)})"
    ema = next((key for key in EMA_KEYS if key in found), None)
    if ema is not None:
        others = [key for key in found if key != ema]
        beside = f" beside {_names(others)}" if others else ""
        return ema, f"the averaged (EMA) weights serve by default{beside}; state_dict_key picks another"
    key = next((k for k in WRAPPER_KEYS if k in found), None)
    if key is not None:
        return key, f"the known wrapper key {key!r}"
    if len(found) == 1:
        only = next(iter(found))
        return only, f"the only dict of tensors in the file ({only!r})"
    what = (
        f"several dicts of tensors ({_names(found)}) and none is named"
        if found
        else "no tensors; expected a state_dict or a dict with one of"
    )
    raise CheckpointError(
        f"{path} holds {what} {', '.join(ENTRY_KEYS)}; top-level keys: "
        f"{_names(top_keys) or 'none (an empty dict)'}. Name the entry with state_dict_key"
    )


class Unwrapped(NamedTuple):
    """What ``unwrap`` found in a loaded file."""

    key: str | None
    """The entry that serves, or None when the file is the state dict itself."""
    ignored: tuple[str, ...]
    """Every other top-level key (other entries, optimizer state, epoch, ...)."""
    state_dict: StateDict
    reason: str
    """Why that entry serves; empty for a plain state dict."""
    entries: tuple[str, ...]
    """The top-level keys that hold state dicts, the serving one first; empty for a plain state dict."""


def unwrap(loaded: object, path: Path, requested: str | None = None) -> Unwrapped:
    """The tensors of a loaded file: the object itself, or the entry ``choose_entry`` picks."""
    direct = _tensor_dict(loaded)
    if direct is not None and requested is None:
        trimmed = without_average_count(direct)
        averaged = trimmed is not direct
        why = "an AveragedModel state dict (its n_averaged counter is not loaded)" if averaged else ""
        return Unwrapped(None, (), trimmed, why, ())
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not a state_dict (a dict of tensors)")
    found = {str(k): tensors for k, value in loaded.items() if (tensors := _tensor_dict(value)) is not None}
    key, reason = choose_entry(list(found), requested, path, [str(k) for k in loaded])
    ignored = tuple(str(k) for k in loaded if k != key)
    entries = (key, *(name for name in found if name != key))
    return Unwrapped(key, ignored, without_average_count(found[key]), reason, entries)


def unwrapped_checkpoint(
    loaded: object,
    path: Path,
    file_format: CheckpointFormat,
    devices: tuple[str, ...],
    state_dict_key: str | None,
) -> RawCheckpoint:
    """A one-file checkpoint's ``RawCheckpoint``: ``loaded`` unwrapped (see ``unwrap``)."""
    found = unwrap(loaded, path, state_dict_key)
    return RawCheckpoint(
        path,
        file_format,
        found.key,
        found.ignored,
        found.state_dict,
        devices,
        found.entries,
        found.reason,
        (path,),
    )


def _tensor_dict(value: object) -> StateDict | None:
    """The state dict ``value`` is (kept as is, with its ``_metadata``), or None."""
    if isinstance(value, nn.Module):  # a whole pickled model, only reachable with trust_pickle
        return value.state_dict()
    if (
        isinstance(value, dict)
        and value
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    ):
        return value
    return None


def without_average_count(state_dict: StateDict) -> StateDict:
    """An ``AveragedModel`` state dict (``module.*`` + ``n_averaged``) without its counter.

    The counter is the averager's, not the model's: with it no prefix could be stripped.
    Any other state dict is returned as it is.
    """
    if AVERAGED_COUNT not in state_dict or len(state_dict) < 2:
        return state_dict
    rest = [key for key in state_dict if key != AVERAGED_COUNT]
    if not all(key.startswith("module.") for key in rest):
        return state_dict
    trimmed = {key: state_dict[key] for key in rest}
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:  # per-module versions, for the modules' own key migrations
        trimmed = _with_metadata(trimmed, metadata)
    return trimmed


def _with_metadata(state_dict: StateDict, metadata: object) -> StateDict:
    ordered: OrderedDict[str, torch.Tensor] = OrderedDict(state_dict)
    ordered._metadata = metadata  # type: ignore[attr-defined]
    return ordered


def _names(keys: Iterable[object]) -> str:
    return ", ".join(repr(str(key)) for key in keys)
