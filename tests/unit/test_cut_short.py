"""``check_not_cut_short``: what the watcher reads from a file's ends before it hashes or loads it.

Every prefix of a whole ``torch.save`` zip or safetensors file is refused by name; the whole
file passes, and so (its documented limit) does a same-size mix of two files of one layout,
which only the quiet period, CRCs or a ``.sha256`` can stop.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch

from service.checkpoints.files import check_not_cut_short
from service.errors import CheckpointError


def _state(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=generator),
        "fc.bias": torch.randn(10, generator=generator),
    }


def _whole(tmp_path: Path, suffix: str, seed: int = 0) -> bytes:
    path = tmp_path / f"w{seed}{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(_state(seed), path)
    else:
        torch.save(_state(seed), path)
    return path.read_bytes()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("kept", [0.0, 0.01, 0.5, 0.99])
def test_every_prefix_is_refused_naming_the_file(tmp_path: Path, suffix: str, kept: float) -> None:
    whole = _whole(tmp_path, suffix)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(whole[: int(len(whole) * kept)])
    with pytest.raises(CheckpointError) as refused:
        check_not_cut_short(path)
    assert str(path) in refused.value.message
    assert "written" in refused.value.message


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_whole_file_and_a_same_size_mix_pass(tmp_path: Path, suffix: str) -> None:
    old, new = _whole(tmp_path, suffix, 0), _whole(tmp_path, suffix, 1)
    assert len(old) == len(new)
    path = tmp_path / f"w{suffix}"
    for data in (new, new[: len(new) * 3 // 4] + old[len(new) * 3 // 4 :]):
        path.write_bytes(data)
        check_not_cut_short(path)


def test_a_legacy_torch_file_has_nothing_to_check(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save(_state(0), path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:100])
    check_not_cut_short(path)  # no structure to read from its ends: the reload's parse refuses it
