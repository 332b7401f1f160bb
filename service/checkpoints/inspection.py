"""``model-serve inspect``: what a checkpoint holds and whether it loads, via the server's pipeline.

Exit codes: 0 the file is a readable checkpoint (and, with an architecture, loads into it);
1 it would not load into the architecture; 2 the file is unreadable or refused, or the
architecture cannot be built.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

from service.checkpoints.architecture import build_model
from service.checkpoints.loading import (
    RawCheckpoint,
    apply_checkpoint,
    dtype_name,
    match_state_dict,
    read_verified,
    shared_prefixes,
)
from service.errors import CheckpointError, ConfigError

LOADS = 0
WOULD_NOT_LOAD = 1
UNREADABLE = 2


def inspect_checkpoint(
    path: Path,
    *,
    architecture: str | None = None,
    init_args: Mapping[str, Any] | None = None,
    out: TextIO,
    trust_pickle: bool = False,
    state_dict_key: str | None = None,
) -> int:
    """Print a report on ``path`` to ``out``; returns the process exit code (0 only if it loads)."""
    try:  # one read: bytes and version
        raw, version = read_verified(path, trust_pickle=trust_pickle, state_dict_key=state_dict_key)
    except CheckpointError as exc:
        print(f"error: {exc.message}", file=out)
        return UNREADABLE
    _summarise(raw, version, out)
    if architecture is None:
        return LOADS
    return _check_architecture(raw, architecture, init_args, out)


def _summarise(raw: RawCheckpoint, version: str, out: TextIO) -> None:
    """Format, wrapping, key prefixes, device tags, dtypes and sizes of what the file holds."""
    tensors = raw.state_dict
    prefixes = shared_prefixes(list(tensors))
    cut = len(prefixes[-1]) if prefixes else 0  # name the roots below any wrapper prefix
    roots = Counter(key[cut:].split(".")[0] for key in tensors)
    dtypes = Counter(dtype_name(tensor) for tensor in tensors.values())
    wrapper = (
        f"{raw.wrapper_key!r} (ignored: {', '.join(raw.ignored_keys) or 'nothing'})"
        if raw.wrapper_key
        else "none (the tensors are at the top level)"
    )
    files = raw.files or (raw.path,)
    rows = [
        ("checkpoint", str(raw.path)),
        ("size", _size(sum(file.stat().st_size for file in files))),
        ("version", version),
        ("format", raw.format),
        *_layout_rows(raw),
        ("wrapper key", wrapper),
        ("key prefixes", " then ".join(repr(p) for p in prefixes) or "none shared by every key"),
        ("top-level names", _first(f"{name} ({count})" for name, count in roots.items())),
        ("device tags", ", ".join(raw.storage_devices) or "none"),
        ("dtypes", ", ".join(f"{name} x{count}" for name, count in sorted(dtypes.items()))),
        ("tensors", str(len(tensors))),
        # every tensor's elements: the file cannot tell parameters from buffers (BatchNorm's
        # running statistics), so they are counted too (docs/checkpoints.md explains both counts)
        ("parameters", f"{sum(tensor.numel() for tensor in tensors.values()):,} (buffers included)"),
    ]
    for label, value in rows:
        print(f"{label + ':':<17}{value}", file=out)


def _layout_rows(raw: RawCheckpoint) -> list[tuple[str, str]]:
    """The files of a folder or index, the entries found, and which one serves and why."""
    rows: list[tuple[str, str]] = []
    if len(raw.files) > 1:
        shards = raw.files[1:]
        kind = "rank files" if raw.format == "dcp" else "shards"
        listed = _first(f"{file.name} ({_size(file.stat().st_size)})" for file in shards)
        rows.append(("files", f"{raw.files[0].name} + {len(shards)} {kind}: {listed}"))
    if raw.entries:
        rows.append(("entries", ", ".join(repr(entry) for entry in raw.entries)))
    if raw.reason:
        rows.append(("serves", f"{raw.wrapper_key!r}: {raw.reason}" if raw.wrapper_key else raw.reason))
    return rows


def _check_architecture(
    raw: RawCheckpoint, architecture: str, init_args: Mapping[str, Any] | None, out: TextIO
) -> int:
    """Build the architecture and load into it exactly as the server would."""
    print(f"{'architecture:':<17}{architecture} {dict(init_args or {})}", file=out)
    try:
        model = build_model(architecture, init_args)
    except ConfigError as exc:
        print(f"error: {exc.message}", file=out)
        return UNREADABLE
    match = match_state_dict(raw.state_dict, model)
    print(
        f"{'strip prefix:':<17}{match.stripped_prefix!r}"
        f"{'' if match.stripped_prefix else ' (nothing is stripped)'}",
        file=out,
    )
    try:
        apply_checkpoint(model, raw, architecture=architecture)
    except CheckpointError as exc:
        print(exc.message, file=out)
        print(f"FAIL: does not load into {architecture}", file=out)
        return WOULD_NOT_LOAD
    print(match.describe(), file=out)
    trainable = sum(parameter.numel() for parameter in model.parameters())
    print(f"{'model weights:':<17}{trainable:,} parameters (buffers excluded)", file=out)
    print(f"OK: loads into {architecture}", file=out)
    return LOADS


def _first(items: Iterable[str], shown: int = 12) -> str:
    """A comma-separated list cut after ``shown`` items, saying how many were left out."""
    listed = list(items)
    more = f", ... ({len(listed) - shown} more)" if len(listed) > shown else ""
    return ", ".join(listed[:shown]) + more


def _size(byte_count: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if byte_count >= scale:
            return f"{byte_count / scale:.1f} {unit} ({byte_count:,} bytes)"
    return f"{byte_count} bytes"
