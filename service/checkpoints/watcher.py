"""``watch: true``: reload a model when its checkpoint file changes, through the normal reload.

Polling (stat every interval) works on every filesystem, including network volumes and
Kubernetes ConfigMap/volume symlink swaps, where inotify often does not. A change is acted on
only once the path is a regular file (a FIFO or device is never opened) whose size, mtime,
inode and content hash are the same at two polls one interval apart, and whose hash differs
from the serving version. A writer that pauses mid-file can still look settled: the reload's
own checks (CRCs, ``.sha256``) refuse such a file, and the old version keeps serving.
The ``.sha256`` beside the checkpoint is watched too: writing it last triggers the reload.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from service.checkpoints.files import FileIdentity, file_identity, file_sha256, sidecar_path
from service.errors import CheckpointError, ServeError

log = logging.getLogger(__name__)

Reload = Callable[[Path], Awaitable[object]]
Stamp = tuple[FileIdentity | None, FileIdentity | None]
"""The checkpoint's identity (None: missing or not a regular file) and its ``.sha256``'s."""


async def watch_checkpoint(
    path: Path, current_version: Callable[[], str | None], reload: Reload, interval_s: float
) -> None:
    """Runs until cancelled; failures are logged and the old version keeps serving."""
    seen = _stamp(path)
    while True:
        await asyncio.sleep(interval_s)
        first = _stamp(path)
        if first == seen or first[0] is None:
            continue
        digest = await _digest(path)
        await asyncio.sleep(interval_s)
        if _stamp(path) != first or await _digest(path) != digest:
            continue  # still changing; look again next round
        seen = first
        if digest is None:
            log.error("watched checkpoint %s cannot be read; old version serving", path)
            continue
        if digest[:12] == current_version():
            continue
        log.info("checkpoint %s changed (version %s): reloading", path, digest[:12])
        try:
            await reload(path)
        except ServeError as error:
            log.error("reload of changed checkpoint %s failed, old version serving: %s", path, error)


def _stamp(path: Path) -> Stamp:
    return file_identity(path), file_identity(sidecar_path(path))


async def _digest(path: Path) -> str | None:
    """The file's SHA-256, or None when it cannot be read (e.g. replaced by a directory)."""
    try:
        return await asyncio.to_thread(file_sha256, path)
    except CheckpointError:
        return None
