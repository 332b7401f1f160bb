"""A checkpoint of several files (a DCP folder, a sharded index) read as one, under one version.

A single file is read whole and judged on that one copy; several files, some far larger than
memory, cannot be. Instead every member's identity (mtime, size, inode) is taken before the
version is hashed and again after the tensors are read: if any file changed, appeared or went
meanwhile, the read is refused, so a version never names weights it did not load. Publishing a
folder by writing it beside the old one and renaming it into place (or writing ``.metadata`` /
the index last) keeps every read whole.
"""

from __future__ import annotations

from service.checkpoints.dcp import read_dcp
from service.checkpoints.layout import Layout, identities, layout_version, members
from service.checkpoints.raw import RawCheckpoint
from service.checkpoints.sharded import read_index
from service.errors import CheckpointError


def read_layout(
    layout: Layout, *, trust_pickle: bool = False, state_dict_key: str | None = None
) -> tuple[RawCheckpoint, str]:
    """The folder's or index's chosen tensors on the CPU, and the version over all its files."""
    files = members(layout)
    before = identities(files)
    version = layout_version(layout, files)
    if layout.kind == "dcp":
        raw = read_dcp(layout, requested=state_dict_key, trust_pickle=trust_pickle)
    else:
        if state_dict_key is not None:
            raise CheckpointError(
                f"state_dict_key {state_dict_key!r} cannot apply to {layout.path}: a sharded index "
                "holds one state dict, not named entries; remove state_dict_key"
            )
        raw = read_index(layout, trust_pickle=trust_pickle)
    if members(layout) != files or identities(files) != before:
        raise CheckpointError(
            f"checkpoint {layout.path} changed while it was being read: a shard is still being "
            "written. Publish a folder by writing it beside the old one and renaming it into place"
        )
    return raw, version
