"""``watch: true``: reload a model when its checkpoint changes, through the normal reload.

Polling (stat every interval) works on every filesystem, including network volumes and
Kubernetes ConfigMap/volume symlink swaps, where inotify often does not. A change is acted on
only once the checkpoint's files (size, mtime, inode) and its version are the same at two polls
one interval apart, and the version differs from the serving one. For a file that is the file
and its ``.sha256`` (writing the ``.sha256`` last triggers the reload); a file that is missing or
not a regular file is waited for. For a folder or index it is every file in the folder, so a
shard still being written keeps the stamp moving; a folder that settles incomplete (a shard
missing or truncated) is handed to the reload once, which refuses it by name, logs it and
counts it, and the old version keeps serving. A writer that pauses mid-file can still look
settled: the reload's own checks (CRCs, sizes, ``.sha256``) refuse such a file.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from service.checkpoints.files import FileIdentity, file_identity, sidecar_path
from service.checkpoints.layout import INDEX_SUFFIX, checkpoint_version
from service.errors import CheckpointError, ServeError

log = logging.getLogger(__name__)

Reload = Callable[[Path], Awaitable[object]]
Stamp = tuple[tuple[str, FileIdentity | None], ...]
"""Each watched file's name and identity (None: missing or not a regular file)."""


async def watch_checkpoint(
    path: Path, current_version: Callable[[], str | None], reload: Reload, interval_s: float
) -> None:
    """Runs until cancelled; failures are logged and the old version keeps serving."""
    seen = _stamp(path)
    while True:
        await asyncio.sleep(interval_s)
        first = _stamp(path)
        if first == seen or not _present(path, first):
            continue
        version = await _version(path)
        await asyncio.sleep(interval_s)
        if _stamp(path) != first or await _version(path) != version:
            continue  # still changing; look again next round
        seen = first
        if version is not None and version == current_version():
            continue
        if version is None and not _is_folder(path):
            log.error("watched checkpoint %s cannot be read; old version serving", path)
            continue
        log.info("checkpoint %s changed (version %s): reloading", path, version or "incomplete")
        try:
            await reload(path)
        except ServeError as error:
            log.error("reload of changed checkpoint %s failed, old version serving: %s", path, error)


def _is_folder(path: Path) -> bool:
    return path.is_dir() or path.name.endswith(INDEX_SUFFIX)


def _stamp(path: Path) -> Stamp:
    if not _is_folder(path):
        return (("", file_identity(path)), ("sidecar", file_identity(sidecar_path(path))))
    folder = path if path.is_dir() else path.parent
    try:
        names = sorted(entry.name for entry in folder.iterdir())
    except OSError:
        return (("", None),)
    return tuple((name, file_identity(folder / name)) for name in names)


def _present(path: Path, stamp: Stamp) -> bool:
    """A file is acted on once it is a regular file; a folder once it holds anything."""
    if _is_folder(path):
        return stamp not in ((), (("", None),))
    return stamp[0][1] is not None


async def _version(path: Path) -> str | None:
    """The checkpoint's version, or None when it cannot be read (incomplete, not a file, ...)."""
    try:
        return await asyncio.to_thread(checkpoint_version, path)
    except CheckpointError:
        return None
