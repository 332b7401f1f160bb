"""Large single-file checkpoints mapped (``mmap``) instead of read whole, so loading one needs
about the model's own size in memory rather than the file twice over.

A file is read whole when it is small: the strongest check, since the version, the
``.sha256`` and the format's own checksums are all judged on the one copy that is loaded.
From ``MAPPED_BYTES`` on, holding that copy beside the tensors doubles the memory a load needs,
so the file is hashed and checked streaming from disk, then mapped (a ``torch.save`` zip with
``torch.load(mmap=True)``, weights only unless ``trust_pickle``; safetensors tensor by tensor);
its identity (mtime, size, inode) is taken before and after, and a file rewritten or replaced
meanwhile is refused, as for folders.
The legacy (non-zip) ``torch.save`` format cannot be mapped and is always read whole.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from service.checkpoints.entries import unwrapped_checkpoint
from service.checkpoints.files import (
    check_safetensors_file,
    check_sidecar_digest,
    check_torch_zip_file,
    file_identity,
    file_sha256,
)
from service.checkpoints.raw import CheckpointFormat, RawCheckpoint
from service.checkpoints.torch_files import read_torch
from service.errors import CheckpointError

MAPPED_BYTES = 256 << 20
"""Files from this size on are mapped rather than read whole."""
_ZIP_MAGIC = b"PK\x03\x04"
_SHORT = 12


def mapped_format(path: Path) -> CheckpointFormat | None:
    """``torch`` or ``safetensors`` when ``path`` is a regular file worth mapping, else None."""
    identity = file_identity(path)
    if identity is None or identity[1] < MAPPED_BYTES:
        return None
    with path.open("rb") as file:
        head = file.read(9)
    if head.startswith(_ZIP_MAGIC):
        return "torch"
    if path.suffix == ".safetensors" or head[8:9] == b"{":
        return "safetensors"
    return None


def read_mapped(
    path: Path, file_format: CheckpointFormat, *, trust_pickle: bool, state_dict_key: str | None
) -> tuple[RawCheckpoint, str]:
    """The checkpoint's tensors backed by the mapped file, and its version (as if read whole)."""
    before = file_identity(path)
    sha256 = file_sha256(path)
    check_sidecar_digest(path, sha256)
    if file_format == "safetensors":
        check_safetensors_file(path)
        loaded: object = _safetensors(path)
        devices: tuple[str, ...] = ("cpu",)
    else:
        check_torch_zip_file(path)
        loaded, devices = read_torch(path, path, "cpu", trust_pickle)
    if file_identity(path) != before:
        raise CheckpointError(
            f"{path.name} changed while it was being read: it is still being written. Publish "
            "checkpoints by writing a temporary file in the same folder and renaming it over this one"
        )
    raw = unwrapped_checkpoint(loaded, path, file_format, devices, state_dict_key)
    return raw, sha256[:_SHORT]


def _safetensors(path: Path) -> object:
    try:
        with safe_open(str(path), framework="pt") as file:
            return {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # safetensors raises its own error types for bad files
        raise CheckpointError(f"cannot read {path} as safetensors: {exc}") from exc
