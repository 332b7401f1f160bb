"""``watch: true``: reload a model when its checkpoint file changes, through the normal reload.

Polling (stat every interval) works on every filesystem, including network volumes and
Kubernetes ConfigMap/volume symlink swaps, where inotify often does not. A change is acted
on once the file has stopped changing for one interval (a copy in progress is not loaded),
and only when its content hash differs from the serving version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from service.checkpoint import checkpoint_version, file_identity
from service.errors import ServeError

log = logging.getLogger(__name__)

Reload = Callable[[Path], Awaitable[object]]


async def watch_checkpoint(
    path: Path, current_version: Callable[[], str | None], reload: Reload, interval_s: float
) -> None:
    """Runs until cancelled; failures are logged and the old version keeps serving."""
    last = file_identity(path)
    while True:
        await asyncio.sleep(interval_s)
        stamp = file_identity(path)
        if stamp == last:
            continue
        await asyncio.sleep(interval_s)  # debounce: wait until the writer is done
        settled = file_identity(path)
        if settled != stamp:
            continue  # still changing; look again next round
        last = settled
        if settled is None:
            continue
        try:  # hashing fails too when the path is briefly unreadable (e.g. a directory)
            version = await asyncio.to_thread(checkpoint_version, path)
            if version == current_version():
                continue
            log.info("checkpoint %s changed (version %s): reloading", path, version)
            await reload(path)
        except ServeError as error:
            log.error("reload of changed checkpoint %s failed, old version serving: %s", path, error)
