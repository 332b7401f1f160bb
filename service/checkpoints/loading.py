"""The one checkpoint pipeline, shared by the server and ``inspect``.

find what the path names (``layout``: a file, a DCP folder, a sharded index) -> read and verify
it (a file whole, ``files``; several files through ``folders``) -> open (``weights_only`` or
safetensors) -> unwrap (``entries``: EMA first, or ``state_dict_key``) -> strip a prefix only if
every key then matches -> strict load (half-precision tensors cast once, by ``load_state_dict``)
-> report mismatches by name. Nothing here keeps state between calls, so a fresh model can be
loaded beside a copy that is serving (hot reload).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from torch import nn

from service.checkpoints.entries import WRAPPER_KEYS, unwrapped_checkpoint
from service.checkpoints.files import (
    ZIP_MAGIC,
    WholeFile,
    check_safetensors,
    check_sidecar,
    check_torch_zip,
    read_whole,
)
from service.checkpoints.folders import read_layout
from service.checkpoints.layout import checkpoint_version, find_layout
from service.checkpoints.mapped import mapped_format, read_mapped
from service.checkpoints.raw import CheckpointFormat, RawCheckpoint, StateDict
from service.checkpoints.torch_files import read_torch
from service.errors import CheckpointError

__all__ = [
    "WRAPPER_KEYS",
    "KeyMatch",
    "LoadReport",
    "RawCheckpoint",
    "apply_checkpoint",
    "checkpoint_version",
    "install",
    "load_weights",
    "match_state_dict",
    "read_checkpoint",
    "read_verified",
    "shared_prefixes",
]

ShapeMismatch = tuple[str, tuple[int, ...], tuple[int, ...]]
"""(model key, shape in the checkpoint, shape in the model)."""

# torch.save's legacy format starts with torch.serialization.MAGIC_NUMBER pickled (protocol 2).
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
_SHOWN = 5


@dataclass(frozen=True)
class KeyMatch:
    """How checkpoint keys line up with a model's: unexpected keys as saved, the rest as the model's."""

    stripped_prefix: str
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    shape_mismatches: tuple[ShapeMismatch, ...]
    rejected_prefixes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when a strict ``load_state_dict`` of the stripped keys will succeed."""
        return not (self.missing or self.unexpected or self.shape_mismatches)

    def describe(self) -> str:
        """A multi-line report: counts, the first few keys of each kind, and what to try."""
        prefix = self.stripped_prefix
        strip = f" after stripping the prefix {prefix!r}" if prefix else ""
        if self.ok:
            return f"every checkpoint key matches the model{strip}"
        lines = [
            f"checkpoint keys do not match the model{strip}: {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.shape_mismatches)} with the wrong shape"
        ]
        lines += _listing("missing from the checkpoint", self.missing)
        lines += _listing("unexpected in the checkpoint", self.unexpected)
        lines += _listing(
            "wrong shape",
            [
                f"{key}: checkpoint {list(saved)}, model {list(wanted)}"
                for key, saved, wanted in self.shape_mismatches
            ],
        )
        if self.rejected_prefixes:
            shared = ", ".join(repr(prefix) for prefix in self.rejected_prefixes)
            lines.append(
                f"  every checkpoint key starts with {shared}, but stripping it does not "
                "make the keys match the model's, so nothing was stripped"
            )
        lines.append(f"hint: {self._hint()}")
        return "\n".join(lines)

    def _hint(self) -> str:
        if not (self.missing or self.unexpected):
            return (
                "the layers match but their sizes do not: check init_args (e.g. num_classes, "
                "channels) against the run that saved the checkpoint"
            )
        if self.missing and self.unexpected:
            return (
                "the key names differ: check `architecture` (is this the model that was "
                "saved?), and whether the saved keys carry a prefix or naming of their own"
            )
        return (
            "some tensors are absent on one side: check `architecture` and init_args "
            "(optional heads or layers enabled differently when saving)"
        )


@dataclass(frozen=True)
class LoadReport:
    """What ``load_weights`` loaded; ``dtypes`` are the checkpoint's tensor dtypes."""

    path: Path
    version: str
    format: CheckpointFormat
    wrapper_key: str | None
    stripped_prefix: str
    storage_devices: tuple[str, ...]
    parameter_count: int
    dtypes: tuple[str, ...]


def read_checkpoint(
    path: Path, *, map_location: torch.device | str = "cpu", trust_pickle: bool = False
) -> RawCheckpoint:
    """``read_verified`` without the version; a file's tensors land on ``map_location``."""
    layout = find_layout(path)
    if layout.kind != "file":
        return read_layout(layout, trust_pickle=trust_pickle)[0]
    return _parse(_read_whole_verified(layout.main), str(map_location), trust_pickle)


def shared_prefixes(keys: Sequence[str]) -> tuple[str, ...]:
    """Every dotted prefix that all ``keys`` start with, shortest first ("module.", ...)."""
    if not keys:
        return ()
    parts = keys[0].split(".")[:-1]
    found: list[str] = []
    for count in range(1, len(parts) + 1):
        prefix = ".".join(parts[:count]) + "."
        if not all(key.startswith(prefix) for key in keys):
            break
        found.append(prefix)
    return tuple(found)


def match_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> KeyMatch:
    """Match keys strictly; a prefix is stripped only when every key then names a model key."""
    wanted = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    keys = list(state_dict)
    candidates = ("", *shared_prefixes(keys))
    prefix = next((p for p in candidates if {k[len(p) :] for k in keys} == wanted.keys()), None)
    if prefix is None:
        missing = tuple(key for key in wanted if key not in state_dict)
        unexpected = tuple(key for key in keys if key not in wanted)
        return KeyMatch("", missing, unexpected, _shapes(state_dict, "", wanted), candidates[1:])
    return KeyMatch(prefix, (), (), _shapes(state_dict, prefix, wanted))


def apply_checkpoint(model: nn.Module, raw: RawCheckpoint, *, architecture: str | None = None) -> KeyMatch:
    """Strictly load ``raw`` into ``model``; raises ``CheckpointError`` naming any mismatch and
    the architecture as configured (``module:callable``; else the model's class)."""
    target = architecture or type(model).__name__
    match = match_state_dict(raw.state_dict, model)
    if not match.ok:
        raise CheckpointError(f"{raw.path} does not load into {target}:\n{match.describe()}")
    try:
        model.load_state_dict(_strip(raw.state_dict, match.stripped_prefix), strict=True)
    except RuntimeError as exc:  # e.g. a module's own _load_from_state_dict migration refusing
        raise CheckpointError(f"{raw.path} does not load into {target}: {exc}") from exc
    return match


def read_verified(
    path: Path, *, trust_pickle: bool = False, state_dict_key: str | None = None
) -> tuple[RawCheckpoint, str]:
    """The checkpoint read once onto the host, and the version of exactly those bytes.

    Every load goes through here (start-up, reload, watch, ``inspect``): the bytes must match
    ``<checkpoint>.sha256`` when it exists, and a torch zip's records their CRC-32s, before
    anything is unpickled; a file rewritten while it is read is refused. A folder or index is
    read by ``folders.read_layout``, with the same promises for each of its files.
    """
    layout = find_layout(path)
    if layout.kind != "file":
        return read_layout(layout, trust_pickle=trust_pickle, state_dict_key=state_dict_key)
    mappable = mapped_format(layout.main)
    if mappable is not None:
        return read_mapped(layout.main, mappable, trust_pickle=trust_pickle, state_dict_key=state_dict_key)
    whole = _read_whole_verified(layout.main)
    return _parse(whole, "cpu", trust_pickle, state_dict_key), whole.version


def _read_whole_verified(path: Path) -> WholeFile:
    whole = read_whole(path)
    check_sidecar(whole)  # the SHA-256 already computed for the version, not a second read
    return whole


def _parse(
    whole: WholeFile, device: str, trust_pickle: bool, state_dict_key: str | None = None
) -> RawCheckpoint:
    """Check the format's own integrity data, then open and unwrap; tensors land on ``device``."""
    file_format = _sniff(whole)
    if file_format == "safetensors":
        check_safetensors(whole)
        try:
            loaded: object = {k: v.to(device) for k, v in load_safetensors(whole.data).items()}
        except Exception as exc:  # safetensors raises its own error types for bad files
            raise CheckpointError(f"cannot read {whole.path} as safetensors: {exc}") from exc
        devices: tuple[str, ...] = ("cpu",)
    else:
        if whole.data.startswith(ZIP_MAGIC):  # the legacy format has no checksums to check
            check_torch_zip(whole)
        loaded, devices = read_torch(whole.data, whole.path, device, trust_pickle)
    return unwrapped_checkpoint(loaded, whole.path, file_format, devices, state_dict_key)


def install(
    model: nn.Module, raw: RawCheckpoint, device: torch.device | str, *, architecture: str | None = None
) -> KeyMatch:
    """``model`` on ``device`` with ``raw``'s weights (strict), in eval mode, frozen."""
    model.to(device)
    match = apply_checkpoint(model, raw, architecture=architecture)
    model.eval().requires_grad_(False)
    return match


def load_weights(
    model: nn.Module,
    path: Path,
    *,
    device: torch.device | str = "cpu",
    trust_pickle: bool = False,
    state_dict_key: str | None = None,
) -> LoadReport:
    """Load ``path`` into ``model`` on ``device``, eval mode, frozen; touches only ``model``."""
    raw, version = read_verified(path, trust_pickle=trust_pickle, state_dict_key=state_dict_key)
    match = install(model, raw, device)
    return LoadReport(
        path=path,
        version=version,
        format=raw.format,
        wrapper_key=raw.wrapper_key,
        stripped_prefix=match.stripped_prefix,
        storage_devices=raw.storage_devices,
        parameter_count=sum(parameter.numel() for parameter in model.parameters()),
        dtypes=tuple(sorted({dtype_name(t) for t in raw.state_dict.values()})),
    )


def dtype_name(tensor: torch.Tensor) -> str:
    """``float32`` rather than ``torch.float32``."""
    return str(tensor.dtype).removeprefix("torch.")


def _sniff(whole: WholeFile) -> CheckpointFormat:
    """Tell the format from the first bytes, refusing anything that is not a checkpoint unread."""
    path, head, size = whole.path, whole.data[:16], len(whole.data)
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); was it written completely?")
    if head.startswith((ZIP_MAGIC, _LEGACY_MAGIC)):
        return "torch"
    # safetensors: an 8-byte little-endian header length, then the JSON header itself
    header_bytes = int.from_bytes(head[:8], "little")
    if path.suffix == ".safetensors" or (header_bytes <= size - 8 and head[8:9] == b"{"):
        return "safetensors"
    if head[:1] == b"\x80":
        raise CheckpointError(
            f"{path} is a plain Python pickle, not a torch.save checkpoint; it was not opened "
            "because unpickling can run code. Re-save it with torch.save(model.state_dict(), "
            "path) or as .safetensors"
        )
    raise CheckpointError(
        f"{path} is not a checkpoint: expected a torch.save file or a .safetensors file, "
        f"but it starts with {head[:8]!r}"
    )


def _strip(state_dict: StateDict, prefix: str) -> StateDict:
    """A copy without ``prefix``; ``_metadata`` (per-module versions for migrations) follows."""
    if not prefix:
        return state_dict  # load_state_dict copies its argument, so this is not mutated
    stripped: OrderedDict[str, torch.Tensor] = OrderedDict(
        (key[len(prefix) :], value) for key, value in state_dict.items()
    )
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:  # keys are module paths without the trailing dot ("module.0")
        stripped._metadata = OrderedDict(  # type: ignore[attr-defined]
            (name[len(prefix) :] if name != prefix[:-1] else "", value)
            for name, value in metadata.items()
            if name == prefix[:-1] or name.startswith(prefix)
        )
    return stripped


def _shapes(
    state_dict: Mapping[str, torch.Tensor], prefix: str, wanted: Mapping[str, tuple[int, ...]]
) -> tuple[ShapeMismatch, ...]:
    """(model key, checkpoint shape, model shape) for keys present on both sides."""
    found = ((key[len(prefix) :], tuple(value.shape)) for key, value in state_dict.items())
    return tuple((key, shape, wanted[key]) for key, shape in found if key in wanted and shape != wanted[key])


def _listing(title: str, items: Sequence[str]) -> list[str]:
    if not items:
        return []
    more = [f"    ... and {len(items) - _SHOWN} more"] if len(items) > _SHOWN else []
    return [f"  {title} ({len(items)}):", *(f"    {item}" for item in items[:_SHOWN]), *more]
