"""Where a reload may read from: only regular files and checkpoint folders under ``checkpoint_root``."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from service.checkpoints.layout import find_layout, members
from service.errors import Forbidden, InvalidParameter, NotFound


def resolve_checkpoint(root: Path, requested: str) -> Path:
    """``requested`` (relative to ``root``, or absolute inside it) as a resolved file or folder path.

    Refuses ``..`` components, absolute paths elsewhere, and links that lead out of ``root``,
    also from a folder's or index's shards.
    """
    if not requested.strip():
        raise InvalidParameter(
            "the checkpoint path is empty; leave 'checkpoint' out to re-read the configured file"
        )
    if "\x00" in requested:
        raise Forbidden("the checkpoint path contains a NUL byte")
    candidate = PurePosixPath(requested)
    if ".." in candidate.parts:
        raise Forbidden(f"{requested!r}: '..' is not allowed in checkpoint paths")
    root = root.resolve()
    path = Path(candidate) if candidate.is_absolute() else root / candidate
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise Forbidden(f"{requested!r} is outside checkpoint_root; reload reads only files under it")
    if not (resolved.is_file() or resolved.is_dir()):
        raise NotFound(f"no checkpoint file or folder {requested!r} under checkpoint_root")
    for member in members(find_layout(resolved)):
        if not member.resolve().is_relative_to(root):
            raise Forbidden(f"{member.name} of {requested!r} links outside checkpoint_root")
    return resolved
