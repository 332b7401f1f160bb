"""Where a reload may read from: only regular files under ``checkpoint_root``."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from service.errors import Forbidden, InvalidParameter, NotFound


def resolve_checkpoint(root: Path, requested: str) -> Path:
    """``requested`` (relative to ``root``, or absolute inside it) as a resolved file path.

    Refuses ``..`` components, absolute paths elsewhere, and links that lead out of ``root``.
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
    if not resolved.is_file():
        raise NotFound(f"no checkpoint file {requested!r} under checkpoint_root")
    return resolved
