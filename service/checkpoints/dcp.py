"""``torch.distributed.checkpoint`` folders (FSDP/FSDP2, DTensor, torchtitan), read whole in one process.

The plan comes from ``.metadata`` alone: it lists every tensor's global shape and dtype and
where each rank's chunk sits in which ``*.distcp`` file. Only the model's tensors are asked
for, so ``dcp.load`` reads only their byte ranges: optimizer state, however large, is never
read. ``dcp.load`` with ``no_dist=True`` needs no process group and stitches chunks of any
sizes (uneven DTensor shards) into whole tensors. ``.metadata`` is a pickle, so it is unpickled
with an allow-list of the classes DCP itself writes; anything else needs ``trust_pickle``.
"""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

from service.checkpoints.entries import ENTRY_KEYS, choose_entry
from service.checkpoints.layout import Layout
from service.checkpoints.raw import RawCheckpoint, StateDict
from service.errors import CheckpointError

TRAINING_ROOTS = frozenset(
    ("optimizer", "optim", "optimizers", "optimizer_state_dict", "lr_scheduler", "lr_schedulers",
     "scheduler", "dataloader", "train_state", "trainer", "rng_state", "extra_state", "epoch", "step")
)  # fmt: skip
"""Top-level names of training state beside the model (torchtitan, FSDP2 recipes, Lightning)."""

_ALLOWED_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
_ALLOWED_GLOBALS = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
}
# DCP's own warning when no process group exists; one process is exactly what is meant here.
# Filtered once, process-wide: ``catch_warnings`` around each load would swap the filters of
# every thread while a reload runs beside requests.
_SINGLE_PROCESS = "torch.distributed is disabled, unavailable or uninitialized"
warnings.filterwarnings("ignore", message=_SINGLE_PROCESS, category=UserWarning)


def read_dcp(layout: Layout, *, requested: str | None = None, trust_pickle: bool = False) -> RawCheckpoint:
    """The model's tensors of the DCP folder, whole, on the CPU; keys below the chosen entry."""
    metadata = read_metadata(layout.main, trust_pickle=trust_pickle)
    files = _check_storage(layout, metadata)
    tensors = {
        fqn: meta
        for fqn, meta in metadata.state_dict_metadata.items()
        if isinstance(meta, TensorStorageMetadata)
    }
    roots = list(dict.fromkeys(_root(fqn) for fqn in metadata.state_dict_metadata))
    models = [root for root in roots if root not in TRAINING_ROOTS]
    if requested is not None or (models and set(models) <= set(ENTRY_KEYS)):
        entry, reason = choose_entry(roots if requested else models, requested, layout.path, roots)
        prefix, wanted = entry + ".", [fqn for fqn in tensors if fqn.startswith(entry + ".")]
    else:
        entry, prefix = None, ""
        wanted = [fqn for fqn in tensors if _root(fqn) not in TRAINING_ROOTS]
        reason = "the model's tensors are at the top level"
    if not wanted:
        raise CheckpointError(
            f"DCP checkpoint {layout.path} holds no model tensors; its top-level names are "
            f"{', '.join(map(repr, roots))}. Name the entry to serve with state_dict_key"
        )
    skipped = [root for root in roots if root != entry and (entry is not None or root in TRAINING_ROOTS)]
    if skipped:
        reason += f"; {', '.join(map(repr, skipped))} not read"
    loaded = _load(layout, trust_pickle, {fqn: _empty(tensors[fqn]) for fqn in wanted})
    return RawCheckpoint(
        path=layout.path,
        format="dcp",
        wrapper_key=entry,
        ignored_keys=tuple(skipped),
        state_dict={fqn[len(prefix) :]: tensor for fqn, tensor in loaded.items()},
        storage_devices=("cpu",),
        entries=tuple(dict.fromkeys(_root(fqn) for fqn in tensors)) if entry is not None else (),
        reason=reason,
        files=files,
    )


def read_metadata(path: Path, *, trust_pickle: bool = False) -> Metadata:
    """``.metadata`` unpickled with DCP's own classes only (everything, with ``trust_pickle``)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        loaded = pickle.loads(data) if trust_pickle else _MetadataUnpickler(io.BytesIO(data)).load()
    except CheckpointError:
        raise
    except Exception as exc:  # a truncated pickle raises EOFError, UnpicklingError, ...
        raise CheckpointError(
            f"{path} is not whole torch.distributed.checkpoint metadata (truncated or still being "
            f"written?): {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(loaded, Metadata):
        raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not DCP metadata")
    return loaded


def ranks(metadata: Metadata) -> int:
    """How many ``*.distcp`` files (one per rank that wrote, usually) the save spread over."""
    return len({info.relative_path for info in metadata.storage_data.values()})


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        dtype = getattr(torch, name, None) if module == "torch" else None
        if module in _ALLOWED_MODULES or (module, name) in _ALLOWED_GLOBALS or isinstance(dtype, torch.dtype):
            return super().find_class(module, name)
        raise CheckpointError(
            f"DCP metadata references {module}.{name}, which torch.distributed.checkpoint does not "
            "write; it was not unpickled (that can run code). Set `trust_pickle: true` only if you "
            "trust the folder"
        )


class _Reader(FileSystemReader):
    """``FileSystemReader`` whose metadata comes through ``read_metadata``'s allow-list."""

    def __init__(self, folder: Path, trust_pickle: bool) -> None:
        super().__init__(folder)
        self._metadata_path = folder / ".metadata"
        self._trust_pickle = trust_pickle

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = read_metadata(self._metadata_path, trust_pickle=self._trust_pickle)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id  # type: ignore[union-attr]
        return metadata


def _load(layout: Layout, trust_pickle: bool, state_dict: StateDict) -> StateDict:
    try:
        dcp_load(state_dict, storage_reader=_Reader(layout.folder, trust_pickle), no_dist=True)
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as exc:  # the latter is a BaseException: name it
        reason = _first_failure(exc)
        raise CheckpointError(
            f"cannot read the model's tensors from DCP checkpoint {layout.path} (a shard truncated "
            f"or corrupt?): {reason}"
        ) from exc
    return state_dict


def _first_failure(exc: BaseException) -> str:
    """The underlying error of a ``CheckpointException`` (it wraps each rank's), else ``exc``'s."""
    failures = exc.failures if isinstance(exc, CheckpointException) else {}
    first = next(iter(failures.values()), exc)
    cause = first[0] if isinstance(first, tuple) else first  # (exception, traceback) per rank
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[0]}" if text else type(cause).__name__


def _check_storage(layout: Layout, metadata: Metadata) -> tuple[Path, ...]:
    """Every ``.distcp`` file the metadata names exists and is long enough for its byte ranges."""
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, end in needed.items():
        path = layout.folder / name
        try:
            size = path.stat().st_size
        except OSError:
            raise CheckpointError(
                f"shard {name} of DCP checkpoint {layout.path} is missing (.metadata names it); "
                "copy every .distcp file of the save"
            ) from None
        if size < end:
            raise CheckpointError(
                f"shard {name} of DCP checkpoint {layout.path} is truncated: {size} bytes, "
                f".metadata needs {end} (still being written or copied?)"
            )
    return (layout.main, *(layout.folder / name for name in sorted(needed)))


def _empty(meta: TensorStorageMetadata) -> torch.Tensor:
    return torch.empty(meta.size, dtype=meta.properties.dtype)


def _root(fqn: str) -> str:
    return fqn.split(".", 1)[0]
