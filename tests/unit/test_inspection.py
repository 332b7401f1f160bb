"""inspect_checkpoint: what it prints about a file, and exit codes that scripts can rely on."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from service.checkpoints.inspection import inspect_checkpoint

NetFactory = Callable[..., nn.Module]


def _inspect(path: Path, architecture: str | None = None, **kwargs: Any) -> tuple[int, str]:
    out = io.StringIO()
    code = inspect_checkpoint(path, architecture=architecture, out=out, **kwargs)
    return code, out.getvalue()


@pytest.fixture
def checkpoint(tmp_path: Path, make_net: NetFactory) -> Path:
    """A training-style checkpoint: the state dict under "state_dict" beside extras."""
    path = tmp_path / "model.pt"
    torch.save({"state_dict": make_net(seed=0).state_dict(), "epoch": 3, "optimizer": {}}, path)
    return path


def test_summary_of_a_readable_file(checkpoint: Path) -> None:
    code, text = _inspect(checkpoint)
    assert code == 0
    assert "format:          torch" in text
    assert "wrapper key:     'state_dict' (ignored: epoch, optimizer)" in text
    assert "key prefixes:    none shared by every key" in text
    assert "top-level names: conv (2), bn (5), fc (2)" in text
    assert "device tags:     cpu" in text
    assert "dtypes:          float32 x8, int64 x1" in text
    assert "tensors:         9" in text
    assert f"parameters:      {4 * 9 + 4 + 4 * 4 + 1 + 16 * 3 + 3:,} (buffers included)" in text
    assert f"({checkpoint.stat().st_size:,} bytes)" in text


def test_loads_into_its_architecture(checkpoint: Path, net_spec: str) -> None:
    code, text = _inspect(checkpoint, net_spec, init_args={"num_classes": 3})
    assert code == 0
    assert "strip prefix:    '' (nothing is stripped)" in text
    assert f"model weights:   {4 * 9 + 4 + 4 + 4 + 16 * 3 + 3:,} parameters (buffers excluded)" in text
    assert text.rstrip().endswith(f"OK: loads into {net_spec}")


def test_data_parallel_file_shows_the_prefix_it_strips(
    tmp_path: Path, make_net: NetFactory, net_spec: str
) -> None:
    path = tmp_path / "dp.pt"
    torch.save(nn.DataParallel(make_net(seed=0)).state_dict(), path)
    code, text = _inspect(path, net_spec)
    assert code == 0
    assert "key prefixes:    'module.'" in text
    assert "strip prefix:    'module.'" in text
    assert "every checkpoint key matches the model after stripping the prefix 'module.'" in text


def test_gpu_tagged_file_shows_its_device(
    tmp_path: Path, make_net: NetFactory, net_spec: str, tagged_save: Callable[[object, Path, str], None]
) -> None:
    path = tmp_path / "gpu.pt"
    tagged_save(make_net(seed=0).state_dict(), path, "cuda:1")
    code, text = _inspect(path, net_spec)
    assert code == 0
    assert "device tags:     cuda:1" in text
    assert "OK: loads into" in text


def test_safetensors_file(tmp_path: Path, make_net: NetFactory) -> None:
    path = tmp_path / "model.safetensors"
    save_file(make_net(seed=0).state_dict(), path)
    code, text = _inspect(path)
    assert code == 0
    assert "format:          safetensors" in text


def test_wrong_architecture_lists_mismatches(checkpoint: Path, net_spec: str) -> None:
    code, text = _inspect(checkpoint, net_spec, init_args={"num_classes": 10})
    assert code == 1
    assert "fc.weight: checkpoint [3, 16], model [10, 16]" in text
    assert "num_classes" in text
    assert f"FAIL: does not load into {net_spec}" in text
    code, text = _inspect(checkpoint, "torch.nn:Linear", init_args={"in_features": 16, "out_features": 3})
    assert code == 1
    assert "2 missing, 9 unexpected" in text


def test_architecture_that_cannot_be_built(checkpoint: Path) -> None:
    code, text = _inspect(checkpoint, "no_such_module_xyz:net")
    assert code == 2
    assert "PYTHONPATH" in text


def test_malicious_pickle_is_refused(malicious_torch: Path, marker: Path) -> None:
    code, text = _inspect(malicious_torch)
    assert code == 2
    assert "--trust-pickle" in text
    assert not marker.exists()


def test_truncated_file(checkpoint: Path) -> None:
    checkpoint.write_bytes(checkpoint.read_bytes()[:1500])
    code, text = _inspect(checkpoint)
    assert code == 2
    assert text.startswith("error: ")
    assert "truncated or corrupt" in text


def test_full_module_with_trust_pickle(tmp_path: Path, make_net: NetFactory, net_spec: str) -> None:
    path = tmp_path / "full.pt"
    torch.save(make_net(seed=0), path)
    assert _inspect(path, net_spec)[0] == 2
    code, text = _inspect(path, net_spec, trust_pickle=True)
    assert code == 0
    assert "OK: loads into" in text


# Folders and index files: the format, the files, the entries and which one serves.


def test_a_dcp_folder_reports_ranks_entries_and_what_serves(tmp_path: Path) -> None:
    from tests.support.training import ARCH, ARGS, save_dcp, trained

    model, optimizer = trained(seed=1)
    folder = save_dcp({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "dcp")
    code, text = _inspect(folder, ARCH, init_args=ARGS)
    assert code == 0, text
    assert "format:          dcp" in text
    assert "files:           .metadata + 1 rank files: __0_0.distcp" in text
    assert "entries:         'model', 'optimizer'" in text
    assert "serves:          'model': the known wrapper key 'model'; 'optimizer' not read" in text
    assert f"OK: loads into {ARCH}" in text


def test_an_index_reports_its_shards_and_total_size(tmp_path: Path) -> None:
    from tests.support.training import ARCH, ARGS, save_sharded, trained

    index = save_sharded(trained(seed=2)[0].state_dict(), tmp_path / "hf", kind="safetensors", shards=2)
    code, text = _inspect(index.parent, ARCH, init_args=ARGS)
    total = sum(file.stat().st_size for file in index.parent.iterdir())
    shards = sorted(index.parent.glob("*-of-*"))
    assert code == 0, text
    assert "format:          sharded-safetensors" in text
    assert f"({total:,} bytes)" in text
    assert f"model.safetensors.index.json + {len(shards)} shards: {shards[0].name}" in text
    shards[-1].unlink()
    code, text = _inspect(index)
    assert code == 2 and f"{shards[-1].name} of checkpoint" in text and "is missing" in text


def test_an_ema_file_says_the_averaged_weights_serve(tmp_path: Path, make_net: NetFactory) -> None:
    path = tmp_path / "timm.pth"
    state = make_net(seed=0).state_dict()
    optimizer = torch.optim.SGD(make_net(seed=0).parameters(), lr=0.1, momentum=0.9).state_dict()
    torch.save({"epoch": 3, "state_dict": state, "optimizer": optimizer, "state_dict_ema": state}, path)
    code, text = _inspect(path)
    assert code == 0
    entries = next(line for line in text.splitlines() if line.startswith("entries:"))
    assert entries == "entries:         'state_dict_ema', 'state_dict'"  # not epoch nor optimizer
    assert "serves:          'state_dict_ema': the averaged (EMA) weights serve by default" in text
    code, text = _inspect(path, state_dict_key="state_dict")
    assert "serves:          'state_dict': state_dict_key names it" in text
