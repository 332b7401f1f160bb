"""A checkpoint file's bytes, whole: read once from a regular file, hashed, checked before parsing.

Only regular files are opened, and without blocking (``O_NONBLOCK``, then ``fstat``): a FIFO or
device at a checkpoint path would otherwise hang the reading thread for ever, and with it the
shutdown. The bytes are read once and everything is judged on that one copy: the SHA-256
(the version), an optional ``<checkpoint>.sha256`` beside the file, and the file's own
structure (a torch zip's CRC-32 per record, a safetensors header's offsets against the data
size), so a file rewritten meanwhile can never be loaded under another file's version, and a
half-written one is refused instead of served.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from service.errors import CheckpointError

SIDECAR_SUFFIX = ".sha256"
ZIP_MAGIC = b"PK\x03\x04"
"""How a file in torch.save's default (zip) format begins."""
_SIDECAR_MAX_BYTES = 64 * 1024
_CHUNK_BYTES = 1 << 20
_SHORT = 12  # hex digits shown: the contract's version length
FileIdentity = tuple[int, int, int]
"""(mtime_ns, size, inode): what changes when a file is rewritten or replaced."""


@dataclass(frozen=True)
class WholeFile:
    """The bytes of ``path`` as read in one go, and their SHA-256 (hex)."""

    path: Path
    data: bytes
    sha256: str

    @property
    def version(self) -> str:
        """The contract's model version: the first 12 hex digits of the SHA-256."""
        return self.sha256[:_SHORT]


def file_identity(path: Path) -> FileIdentity | None:
    """The identity of the regular file at ``path``; None while it is missing or not a regular file."""
    try:
        info = path.stat()
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino


def sidecar_path(path: Path) -> Path:
    """Where the optional digest of ``path`` lives: ``model.pt`` -> ``model.pt.sha256``."""
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_whole(path: Path) -> WholeFile:
    """All of ``path``, refused when it is not a regular file or changes while being read."""
    fd = _open_regular(path)
    with os.fdopen(fd, "rb", buffering=0) as file:
        before = os.fstat(fd)
        try:
            data = file.read()
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
        after = os.fstat(fd)
    if (before.st_mtime_ns, before.st_size) != (after.st_mtime_ns, after.st_size) or len(
        data
    ) != after.st_size:
        raise CheckpointError(
            f"{path.name} changed while it was being read: it is still being written. Publish "
            "checkpoints by writing a temporary file in the same folder and renaming it over this one"
        )
    return WholeFile(path, data, hashlib.sha256(data).hexdigest())


def file_sha256(path: Path) -> str:
    """The SHA-256 (hex) of the regular file at ``path``, streamed: nothing is kept in memory."""
    digest = hashlib.sha256()
    with os.fdopen(_open_regular(path), "rb", buffering=0) as file:
        try:
            for chunk in iter(lambda: file.read(_CHUNK_BYTES), b""):
                digest.update(chunk)
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def check_sidecar(whole: WholeFile) -> None:
    """When ``<checkpoint>.sha256`` exists, the bytes read must have exactly that digest."""
    check_sidecar_digest(whole.path, whole.sha256)


def check_sidecar_digest(path: Path, sha256: str) -> None:
    """When ``<path>.sha256`` exists, ``sha256`` (of the bytes loaded) must be its digest."""
    sidecar = sidecar_path(path)
    try:
        fd = _open_regular(sidecar)
    except CheckpointError:
        if not os.path.lexists(sidecar):
            return
        raise
    with os.fdopen(fd, "rb", buffering=0) as file:
        text = file.read(_SIDECAR_MAX_BYTES).decode("ascii", errors="replace")
    expected = _sidecar_digest(text, sidecar)
    if expected != sha256:
        raise CheckpointError(
            f"checkpoint {path} does not match {sidecar.name}: the file's SHA-256 is "
            f"{sha256[:_SHORT]}..., {sidecar.name} says {expected[:_SHORT]}...; the file is "
            "incomplete, or the .sha256 belongs to another file. Write the checkpoint first and "
            "its .sha256 last"
        )


def check_torch_zip(whole: WholeFile) -> None:
    """Every record of a ``torch.save`` zip has its size and CRC-32 (torch.load checks neither).

    Files saved with ``torch.serialization.set_crc32_options(False)`` carry no CRCs (all 0):
    only their structure can be checked.
    """
    _check_zip(io.BytesIO(whole.data), whole.path)


def check_torch_zip_file(path: Path) -> None:
    """``check_torch_zip`` streamed from disk: for shards opened with ``mmap`` rather than read whole."""
    with os.fdopen(_open_regular(path), "rb") as file:
        _check_zip(file, path)


def _check_zip(source: IO[bytes], path: Path) -> None:
    with _torch_zip(source, path) as archive:
        records = archive.infolist()
        if all(record.CRC == 0 for record in records):
            return
        for record in records:
            with archive.open(record) as member:
                while member.read(_CHUNK_BYTES):
                    pass  # ZipExtFile checks the CRC-32 at the record's end


@contextlib.contextmanager
def _torch_zip(source: IO[bytes], path: Path) -> Iterator[zipfile.ZipFile]:
    """``source`` opened as a zip (its central directory, the last thing a zip writer writes,
    read); any sign inside the block that it is not whole is a ``CheckpointError`` naming ``path``."""
    try:
        with zipfile.ZipFile(source) as archive:
            yield archive
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"{path} is not a whole torch checkpoint (truncated or corrupt? still being written?): {exc}"
        ) from exc


def check_not_cut_short(path: Path) -> None:
    """The cheap half of the structure checks, from the file's ends only: a safetensors header
    that describes exactly the file's size, a torch zip whose central directory reads. A file
    still being written, or cut short, fails them; one rewritten in place at the same size
    passes (only CRCs or a ``.sha256`` catch that)."""
    if path.suffix == ".safetensors":
        check_safetensors_file(path)
        return
    with os.fdopen(_open_regular(path), "rb") as file:
        head = file.read(len(ZIP_MAGIC))
        if not head:
            raise CheckpointError(f"checkpoint {path} is empty (0 bytes); was it written completely?")
        if head == ZIP_MAGIC:
            file.seek(0)
            with _torch_zip(file, path):
                pass


def check_safetensors(whole: WholeFile) -> None:
    """The header is complete JSON and its tensors' offsets end exactly where the file ends."""
    header_bytes = int.from_bytes(whole.data[:8], "little")
    _check_safetensors_header(whole.path, header_bytes, whole.data[8 : 8 + header_bytes], len(whole.data))


def check_safetensors_file(path: Path) -> None:
    """``check_safetensors`` reading only the header: for shards read lazily, tensor by tensor."""
    with os.fdopen(_open_regular(path), "rb", buffering=0) as file:
        size = os.fstat(file.fileno()).st_size
        header_bytes = int.from_bytes(file.read(8), "little")
        header = file.read(min(header_bytes, max(size - 8, 0)))
    _check_safetensors_header(path, header_bytes, header, size)


def _check_safetensors_header(path: Path, claimed: int, header: bytes, size: int) -> None:
    """``header`` (the ``claimed`` bytes after the 8-byte length) describes exactly the file."""
    if size < 8 or claimed > size - 8:
        raise CheckpointError(
            f"cannot read {path} as safetensors: its header claims {claimed} bytes but "
            f"{max(size - 8, 0)} follow (truncated or still being written?)"
        )
    try:
        parsed = json.loads(header)
        ends = [int(entry["data_offsets"][1]) for key, entry in parsed.items() if key != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"cannot read {path} as safetensors: its header is malformed ({exc})") from exc
    described, held = max(ends, default=0), size - 8 - len(header)
    if described != held:
        raise CheckpointError(
            f"cannot read {path} as safetensors: its header describes {described} bytes of "
            f"tensor data but the file holds {held} (truncated or still being written?)"
        )


def _open_regular(path: Path) -> int:
    """A read-only descriptor of the regular file at ``path``; never blocks, never opens a FIFO."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):  # a FIFO or device is never opened at all
            raise CheckpointError(_not_a_file(path, mode))
        # O_NONBLOCK: if a FIFO replaced the file since the stat, open returns at once
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise CheckpointError(_not_a_file(path, mode))
    return fd


def _not_a_file(path: Path, mode: int) -> str:
    kinds = {stat.S_ISDIR: "a directory", stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket"}
    kind = next((name for test, name in kinds.items() if test(mode)), "a device")
    return f"checkpoint {path} is not a file (it is {kind}); only regular files are read"


def _sidecar_digest(text: str, sidecar: Path) -> str:
    """The hex digest of a ``sha256sum`` line: ``<64 hex> [ *]<name>``, or the digest alone."""
    fields = text.split()
    digest = fields[0].removeprefix("\\").lower() if fields else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise CheckpointError(
            f"{sidecar} is not a SHA-256 digest in sha256sum format (64 hex digits, optionally "
            f"followed by the file name); it starts with {text[:40]!r}"
        )
    return digest
