"""``watch: true``: reload a model when its checkpoint changes, through the normal reload.

Polling (stat every interval) works on every filesystem, including network volumes and
Kubernetes ConfigMap/volume symlink swaps, where inotify often does not. A change is acted on
only once the checkpoint's files (size, mtime, inode) have held still long enough, and the
version differs from the serving one:

- A file without a ``.sha256`` beside it must hold still for the quiet period (at least one
  interval). A file rewritten in place at the same size looks whole throughout (safetensors
  has no checksums): a writer that paused for two intervals had a mix of old and new tensors
  loaded and served. A ``.sha256`` proves the bytes instead, so with one (writing it last
  triggers the reload) one interval is enough. A file loaded after an in-place rewrite gets a
  warning that says how to publish safely.
- Before it is hashed or loaded, a file must not be cut short by its own structure
  (``files.check_not_cut_short``); one that is gets a warning naming it and why, is counted
  (``refused``), and is looked at again once it changes. The old version keeps serving.
- A folder or index is every file in the folder, held still for one interval, so a shard still
  being written keeps the stamp moving; a folder that settles incomplete (a shard missing or
  truncated) is handed to the reload once, which refuses it by name, logs it and counts it.

A missing path, or one that is not a regular file, is waited for. A writer that pauses mid-file
longer than the quiet period can still look settled: the reload's own checks (CRCs, sizes,
``.sha256``) then refuse what they can.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from service.checkpoints.files import FileIdentity, check_not_cut_short, file_identity, sidecar_path
from service.checkpoints.layout import INDEX_SUFFIX, checkpoint_version
from service.errors import CheckpointError, ServeError

log = logging.getLogger(__name__)

Reload = Callable[[Path], Awaitable[object]]
Stamp = tuple[tuple[str, FileIdentity | None], ...]
"""Each watched file's name and identity (None: missing or not a regular file)."""


async def watch_checkpoint(
    path: Path,
    current_version: Callable[[], str | None],
    reload: Reload,
    interval_s: float,
    *,
    quiet_s: float,
    refused: Callable[[], None],
) -> None:
    """Runs until cancelled; failures are logged and the old version keeps serving. ``refused``
    is called for each change that is not loaded because the file is cut short."""
    seen = _stamp(path)
    while True:
        await asyncio.sleep(interval_s)
        first = _stamp(path)
        if first == seen or not _present(path, first):
            continue
        if not await _holds_still(path, first, interval_s, _quiet_period(path, first, quiet_s)):
            continue  # still changing; look again next round
        in_place = not _is_folder(path) and _rewritten_in_place(seen, first)
        seen = first
        if not _is_folder(path) and (reason := await _cut_short(path)) is not None:
            log.warning("watched checkpoint %s is not loaded, old version serving: %s", path, reason)
            refused()
            continue
        version = await _version(path)
        if _stamp(path) != first:
            continue  # changed while it was hashed: the next round looks at it again
        if version is not None and version == current_version():
            continue
        if version is None and not _is_folder(path):
            log.error("watched checkpoint %s cannot be read; old version serving", path)
            continue
        log.info("checkpoint %s changed (version %s): reloading", path, version or "incomplete")
        if in_place:
            log.warning(
                "checkpoint %s was rewritten in place with no .sha256 beside it: loaded because it "
                "held still for %g s, but a writer that pauses longer gets a half-written file "
                "served. Publish by renaming a finished file over it, or write a .sha256 last",
                path,
                max(quiet_s, interval_s),
            )
        try:
            await reload(path)
        except ServeError as error:
            log.error("reload of changed checkpoint %s failed, old version serving: %s", path, error)


async def _holds_still(path: Path, stamp: Stamp, interval_s: float, hold_s: float) -> bool:
    """Whether ``path`` keeps ``stamp`` at every poll for ``hold_s`` (at least one more poll)."""
    since = time.monotonic()
    while True:
        await asyncio.sleep(interval_s)
        if _stamp(path) != stamp:
            return False
        if time.monotonic() - since >= hold_s:
            return True


def _quiet_period(path: Path, stamp: Stamp, quiet_s: float) -> float:
    """How long this change must hold still: the quiet period for a file without a ``.sha256``
    (nothing else can tell a paused in-place write from a whole file), else none."""
    has_sidecar = not _is_folder(path) and stamp[1][1] is not None
    return 0.0 if _is_folder(path) or has_sidecar else quiet_s


def _rewritten_in_place(before: Stamp, after: Stamp) -> bool:
    """The same file (inode) as before, changed, with no ``.sha256``: the one way a watched file
    can be loaded half-written, if its writer paused past the quiet period."""
    (_, old), (_, new), (_, sidecar) = before[0], after[0], after[1]
    return old is not None and new is not None and old[2] == new[2] and sidecar is None


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


async def _cut_short(path: Path) -> str | None:
    """Why the file at ``path`` is not whole by its own structure, or None when it looks whole."""
    try:
        await asyncio.to_thread(check_not_cut_short, path)
    except CheckpointError as exc:
        return exc.message
    return None


async def _version(path: Path) -> str | None:
    """The checkpoint's version, or None when it cannot be read (incomplete, not a file, ...)."""
    try:
        return await asyncio.to_thread(checkpoint_version, path)
    except CheckpointError:
        return None
