"""``torch.load`` of a checkpoint's bytes, or of its file mapped (``mmap``), with ``weights_only``.

Full unpickling happens only when the model's config trusts the file; a refusal names the
globals the pickle references, found by a static scan that executes nothing.
"""

from __future__ import annotations

import argparse
import io
import pickle
from pathlib import Path
from typing import Any

import torch

from service.errors import CheckpointError

Source = bytes | Path
"""The bytes read whole, or the path of a file to map (its pages stay in the page cache)."""
_SHOWN = 5


def read_torch(source: Source, path: Path, device: str, trust_pickle: bool) -> tuple[object, tuple[str, ...]]:
    """``torch.load`` with ``weights_only``; full unpickling only if the config trusts the file.

    timm saves its training arguments (an ``argparse.Namespace`` of plain values) beside the
    weights; the Namespace is allowed (process-wide, idempotent: it runs no code), nothing else.
    """
    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        return _torch_load(source, device, weights_only=True)
    except pickle.UnpicklingError:
        if not trust_pickle:
            raise CheckpointError(_refusal(source, path)) from None
    except Exception as exc:  # torch.load raises many types for corrupt or truncated files
        raise _unreadable(path, exc, " (truncated or corrupt?)") from exc
    try:
        return _torch_load(source, device, weights_only=False)
    except Exception as exc:  # full unpickling can fail in any way, e.g. a class since renamed
        raise _unreadable(path, exc, "") from exc


def _unreadable(path: Path, exc: Exception, guess: str) -> CheckpointError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CheckpointError(f"cannot read {path} as a torch checkpoint{guess}: {reason}")


def _torch_load(source: Source, device: str, *, weights_only: bool) -> tuple[object, tuple[str, ...]]:
    """Load, recording each storage's saved location tag while mapping it to ``device``."""
    tags: dict[str, None] = {}  # an ordered set, local to this call

    def restore(storage: Any, location: str) -> Any:
        tags.setdefault(location, None)
        # the registered deserializers move the storage, as a plain map_location would
        return torch.serialization.default_restore_location(  # type: ignore[no-untyped-call]
            storage, device
        )

    # BytesIO shares the bytes (no copy): what is loaded is exactly what was hashed and checked
    if isinstance(source, Path):
        loaded = torch.load(str(source), map_location=restore, weights_only=weights_only, mmap=True)
    else:
        loaded = torch.load(io.BytesIO(source), map_location=restore, weights_only=weights_only)
    return loaded, tuple(tags)


def _refusal(source: Source, path: Path) -> str:
    try:  # a static scan of the pickle's globals: nothing is executed
        scanned = str(source) if isinstance(source, Path) else io.BytesIO(source)
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(scanned))
    except Exception:  # legacy-format files cannot be scanned; the refusal stands without names
        names = []
    needs = f" (it references {', '.join(names[:_SHOWN])})" if names else ""
    return (
        f"checkpoint {path} needs arbitrary unpickling{needs}, which can run any code, so it "
        "was refused (only tensors are loaded, weights_only=True). If you trust the file, set "
        "`trust_pickle: true` in the model's config (inspect: --trust-pickle), or re-save it "
        "as a state_dict or .safetensors"
    )
