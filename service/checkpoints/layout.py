"""What a checkpoint path names: one file, a ``torch.distributed.checkpoint`` folder, or a sharded index.

A folder is told by what it holds, never by its name: ``.metadata`` makes it a DCP folder, one
``*.index.json`` a Hugging Face sharded checkpoint, and exactly one weights file means that file.
Anything else is refused with the names that made it ambiguous. A layout's ``members`` are every
file that belongs to the checkpoint; its version is over all of them, so changing one shard
changes the version, and files beside them (a ``config.json``, a tokenizer) do not.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.checkpoints.files import FileIdentity, file_identity, file_sha256
from service.errors import CheckpointError

LayoutKind = Literal["file", "dcp", "index"]
DCP_METADATA = ".metadata"
INDEX_SUFFIX = ".index.json"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_SHORT = 12
_INDEX_MAX_BYTES = 64 << 20  # an index of a million tensors is ~100 MB; anything near is not one


@dataclass(frozen=True)
class Layout:
    """``path`` as named; ``main`` the file itself, the DCP ``.metadata`` or the index file."""

    path: Path
    kind: LayoutKind
    main: Path

    @property
    def folder(self) -> Path:
        """Where the shards live: the index's or ``.metadata``'s folder."""
        return self.main.parent


def find_layout(path: Path) -> Layout:
    """The layout ``path`` names; a folder that names none (or several) is a ``CheckpointError``."""
    if path.is_dir():
        return _folder_layout(path)
    if path.name.endswith(INDEX_SUFFIX):
        return Layout(path, "index", path)
    if path.name == DCP_METADATA:
        return Layout(path.parent, "dcp", path)
    return Layout(path, "file", path)


def index_weight_map(index: Path) -> dict[str, str]:
    """The ``weight_map`` of a Hugging Face index: tensor name -> shard file name (same folder)."""
    try:
        if index.stat().st_size > _INDEX_MAX_BYTES:
            raise CheckpointError(f"{index} is too large to be a checkpoint index")
        weight_map = json.loads(index.read_bytes())["weight_map"]
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint index {index} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{index} is not a checkpoint index (JSON with a 'weight_map' of tensor name -> shard "
            f"file): {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and "/" not in v and v not in ("", ".", "..")
        for k, v in weight_map.items()
    ):
        raise CheckpointError(f"{index}: 'weight_map' must map tensor names to file names in its folder")
    return weight_map


def members(layout: Layout) -> tuple[Path, ...]:
    """Every file that belongs to the checkpoint, ``main`` first (sorted after it)."""
    if layout.kind == "file":
        return (layout.main,)
    if layout.kind == "index":
        shards = sorted(set(index_weight_map(layout.main).values()))
        return (layout.main, *(layout.folder / name for name in shards))
    return (layout.main, *sorted(layout.folder.glob("*.distcp")))


def identities(files: tuple[Path, ...]) -> tuple[FileIdentity | None, ...]:
    """What changes when any of ``files`` is rewritten, replaced or removed."""
    return tuple(file_identity(file) for file in files)


def layout_version(layout: Layout, files: tuple[Path, ...]) -> str:
    """12 hex digits: the file's SHA-256 for one file; for several, the SHA-256 of each
    member's name and SHA-256 (streamed, nothing kept in memory)."""
    if layout.kind == "file":
        return file_sha256(layout.main)[:_SHORT]
    digest = hashlib.sha256()
    for file in files:
        if file_identity(file) is None:
            raise CheckpointError(f"{file.name} of checkpoint {layout.path} is missing or not a regular file")
        digest.update(f"{file.relative_to(layout.folder)}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()[:_SHORT]


def checkpoint_version(path: Path) -> str:
    """The contract's version of whatever ``path`` names (a file, folder or index)."""
    layout = find_layout(path)
    return layout_version(layout, members(layout))


def _folder_layout(folder: Path) -> Layout:
    if (folder / DCP_METADATA).exists():
        return Layout(folder, "dcp", folder / DCP_METADATA)
    names = sorted(entry.name for entry in folder.iterdir())
    indexes = [name for name in names if name.endswith(INDEX_SUFFIX)]
    if len(indexes) > 1:
        raise CheckpointError(
            f"checkpoint folder {folder} holds several index files ({', '.join(indexes)}); name "
            "the one to serve in `checkpoint`"
        )
    if indexes:
        return Layout(folder, "index", folder / indexes[0])
    if any(name.endswith(".distcp") for name in names):
        raise CheckpointError(
            f"checkpoint folder {folder} holds .distcp files but no .metadata: a "
            "torch.distributed.checkpoint save is incomplete until its coordinator writes "
            ".metadata (last); wait for the save to finish or copy .metadata too"
        )
    weights = [name for name in names if name.endswith(WEIGHT_SUFFIXES) and (folder / name).is_file()]
    if len(weights) == 1:
        return Layout(folder, "file", folder / weights[0])
    what = f"several weights files ({', '.join(weights)})" if weights else "no checkpoint file"
    raise CheckpointError(
        f"checkpoint folder {folder} holds {what}: expected a torch.distributed.checkpoint "
        f"folder (.metadata), a Hugging Face index (*{INDEX_SUFFIX}) or exactly one of "
        f"{', '.join(WEIGHT_SUFFIXES)}; name the file to serve in `checkpoint`"
    )
