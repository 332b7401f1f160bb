"""Checkpoints of today's training stacks, written with the real tools and read through the pipeline."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.optim.swa_utils import AveragedModel

from service.checkpoints.architecture import build_model
from service.checkpoints.layout import checkpoint_version
from service.checkpoints.loading import load_weights, read_verified
from service.errors import CheckpointError
from tests.support.training import ARCH, ARGS, rounded, save_dcp, save_sharded, trained


def _fresh() -> nn.Module:
    torch.manual_seed(99)
    return build_model(ARCH, ARGS)


def _same(model: nn.Module, reference: nn.Module) -> bool:
    theirs = reference.state_dict()
    return all(torch.equal(value, theirs[key]) for key, value in model.state_dict().items())


def test_a_dcp_folder_of_model_and_optimizer_loads_the_model(tmp_path: Path) -> None:
    model, optimizer = trained(seed=1)
    folder = save_dcp({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "dcp")
    fresh = _fresh()
    report = load_weights(fresh, folder)
    assert _same(fresh, model)
    assert (report.format, report.wrapper_key) == ("dcp", "model")
    raw, version = read_verified(folder)
    assert raw.ignored_keys == ("optimizer",) and "'optimizer' not read" in raw.reason
    assert version == report.version == checkpoint_version(folder)
    assert read_verified(folder / ".metadata")[1] == version  # naming .metadata names the folder


def _corrupt_optimizer_bytes(folder: Path) -> int:
    """Overwrite every byte range of the optimizer's entries in the .distcp files; returns how many."""
    metadata = FileSystemReader(folder).read_metadata()
    corrupted = 0
    for index, info in metadata.storage_data.items():
        if index.fqn.startswith("optimizer."):
            with open(folder / info.relative_path, "r+b") as file:
                file.seek(info.offset)
                file.write(b"\xff" * info.length)
            corrupted += info.length
    return corrupted


def test_loading_a_dcp_folder_reads_no_optimizer_bytes(tmp_path: Path) -> None:
    model, optimizer = trained(seed=2)
    folder = save_dcp({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "dcp")
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert _corrupt_optimizer_bytes(folder) > model_bytes  # Adam keeps two tensors per parameter
    fresh = _fresh()
    load_weights(fresh, folder)
    assert _same(fresh, model)
    with pytest.raises(CheckpointError, match="cannot read the model's tensors"):  # the damage is real
        read_verified(folder, state_dict_key="optimizer")


def test_dcp_top_level_tensors_beside_training_state_load(tmp_path: Path) -> None:
    """torchtitan flattens the model's keys to the top level beside ``optimizer``, ``train_state``."""
    model, optimizer = trained(seed=3)
    state = {**model.state_dict(), "optimizer": optimizer.state_dict(), "train_state": {"step": 7}}
    folder = save_dcp(state, tmp_path / "titan")
    fresh = _fresh()
    assert load_weights(fresh, folder).wrapper_key is None
    assert _same(fresh, model)
    plain = save_dcp(model.state_dict(), tmp_path / "plain")
    fresh = _fresh()
    load_weights(fresh, plain)
    assert _same(fresh, model)


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_a_sharded_index_and_its_folder_load(tmp_path: Path, kind: str) -> None:
    model, _ = trained(seed=4)
    index = save_sharded(model.state_dict(), tmp_path / "hf", kind=kind)
    for path in (index, index.parent):
        fresh = _fresh()
        report = load_weights(fresh, path)
        assert _same(fresh, model)
        assert report.format == f"sharded-{'safetensors' if kind == 'safetensors' else 'torch'}"


def test_a_version_covers_every_shard_and_nothing_beside(tmp_path: Path) -> None:
    model, _ = trained(seed=5)
    index = save_sharded(model.state_dict(), tmp_path / "hf", kind="safetensors")
    before = checkpoint_version(index)
    (index.parent / "config.json").write_text("{}")
    assert checkpoint_version(index.parent) == before
    other, _ = trained(seed=6)
    save_sharded(other.state_dict(), tmp_path / "other", kind="safetensors")
    last = sorted(index.parent.glob("*-of-*"))[-1]
    last.write_bytes((tmp_path / "other" / last.name).read_bytes())
    assert checkpoint_version(index) != before


def test_a_folder_holding_one_file_is_that_file(tmp_path: Path) -> None:
    model, _ = trained(seed=7)
    (tmp_path / "run").mkdir()
    torch.save(model.state_dict(), tmp_path / "run" / "last.pt")
    (tmp_path / "run" / "notes.txt").write_text("lr 0.01")
    fresh = _fresh()
    assert load_weights(fresh, tmp_path / "run").version == checkpoint_version(tmp_path / "run" / "last.pt")
    assert _same(fresh, model)


@pytest.mark.parametrize("ema_key", ["state_dict_ema", "model_ema", "ema", "ema_state_dict"])
def test_the_averaged_weights_serve_by_default(tmp_path: Path, ema_key: str) -> None:
    model, _ = trained(seed=8)
    ema, _ = trained(seed=9)
    path = tmp_path / "timm.pth"
    args = argparse.Namespace(model="conv_norm", lr=0.01, sizes=[16, 16], amp=None)
    torch.save({"epoch": 3, "state_dict": model.state_dict(), ema_key: ema.state_dict(), "args": args}, path)
    fresh = _fresh()
    report = load_weights(fresh, path)  # timm's args need no trust_pickle
    assert report.wrapper_key == ema_key and _same(fresh, ema)
    fresh = _fresh()
    assert load_weights(fresh, path, state_dict_key="state_dict").wrapper_key == "state_dict"
    assert _same(fresh, model)
    with pytest.raises(CheckpointError, match=r"'trained' is not an entry .*'state_dict', '" + ema_key):
        load_weights(_fresh(), path, state_dict_key="trained")


class Foreign:
    """Any class but argparse.Namespace: still refused without trust_pickle."""


def test_every_other_foreign_global_is_still_refused(tmp_path: Path) -> None:
    model, _ = trained(seed=10)
    path = tmp_path / "m.pth"
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(x=Foreign())}, path)
    with pytest.raises(CheckpointError, match="needs arbitrary unpickling"):
        load_weights(_fresh(), path)


def test_an_averaged_model_state_dict_loads(tmp_path: Path) -> None:
    model, _ = trained(seed=11)
    averaged = AveragedModel(model)
    later, _ = trained(seed=12)
    model.load_state_dict(later.state_dict())
    averaged.update_parameters(model)
    path = tmp_path / "swa.pt"
    torch.save(averaged.state_dict(), path)
    fresh = _fresh()
    report = load_weights(fresh, path)
    assert report.stripped_prefix == "module."
    assert _same(fresh, averaged.module)
    assert "n_averaged" in read_verified(path)[0].reason


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_files_load_into_a_float32_model(tmp_path: Path, dtype: torch.dtype) -> None:
    model, _ = trained(seed=13)
    half = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    for path in (tmp_path / "half.pt", save_sharded(half, tmp_path / "hf", kind="safetensors")):
        if path.suffix == ".pt":
            torch.save(half, path)
        fresh = _fresh()
        assert str(dtype).removeprefix("torch.") in load_weights(fresh, path).dtypes
        assert all(p.dtype == torch.float32 for p in fresh.parameters())
        assert _same(fresh, rounded(model, dtype))
        assert not _same(fresh, model)  # the rounding is visible: the check above could fail


# Refusals: each names the file that is wrong.


def _index(tmp_path: Path) -> Path:
    return save_sharded(trained(seed=14)[0].state_dict(), tmp_path / "hf", kind="safetensors")


def test_an_index_naming_a_missing_shard_is_refused_by_name(tmp_path: Path) -> None:
    index = _index(tmp_path)
    shard = sorted(index.parent.glob("*-of-*"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"{shard.name}.* is missing"):
        read_verified(index)


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_a_truncated_shard_is_refused_by_name(tmp_path: Path, kind: str) -> None:
    index = save_sharded(trained(seed=15)[0].state_dict(), tmp_path / "hf", kind=kind)
    shard = sorted(index.parent.glob("*-of-*"))[0]
    shard.write_bytes(shard.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match=rf"{shard.name}.*(truncated|not a whole)"):
        read_verified(index)


def test_a_truncated_or_missing_dcp_shard_is_refused_by_name(tmp_path: Path) -> None:
    model, optimizer = trained(seed=16)
    folder = save_dcp({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "dcp")
    shard = next(folder.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=rf"{shard.name} of DCP checkpoint .* is truncated"):
        read_verified(folder)
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"{shard.name} of DCP checkpoint .* is missing"):
        read_verified(folder)


def test_a_dcp_folder_without_metadata_is_refused(tmp_path: Path) -> None:
    model, _ = trained(seed=17)
    folder = save_dcp({"model": model.state_dict()}, tmp_path / "dcp")
    (folder / ".metadata").unlink()
    with pytest.raises(CheckpointError, match=r"holds .distcp files but no .metadata"):
        read_verified(folder)


def test_dcp_metadata_with_a_foreign_global_is_not_unpickled(tmp_path: Path) -> None:
    folder = tmp_path / "dcp"
    folder.mkdir()
    (folder / ".metadata").write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    with pytest.raises(CheckpointError, match=r"references os.system"):
        read_verified(folder)


def test_a_folder_with_two_weights_files_is_refused_naming_both(tmp_path: Path) -> None:
    model, _ = trained(seed=18)
    torch.save(model.state_dict(), tmp_path / "best.pt")
    torch.save(model.state_dict(), tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=r"several weights files \(best.pt, last.pt\)"):
        read_verified(tmp_path)


def test_an_index_that_is_not_json_is_refused(tmp_path: Path) -> None:
    index = _index(tmp_path)
    index.write_text(json.dumps({"metadata": {}})[:-3])
    with pytest.raises(CheckpointError, match=rf"{index.name} is not a checkpoint index"):
        read_verified(index)


# Large single files are mapped, not read whole: the same tensors, version and refusals.


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_mapped_file_loads_as_if_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    from safetensors.torch import save_file

    import service.checkpoints.mapped

    model, _ = trained(seed=19)
    path = tmp_path / f"m{suffix}"
    if suffix == ".pt":
        torch.save({"state_dict": model.state_dict(), "epoch": 1}, path)
    else:
        save_file(model.state_dict(), path)
    whole_raw, whole_version = read_verified(path)
    monkeypatch.setattr(service.checkpoints.mapped, "MAPPED_BYTES", 1)
    assert service.checkpoints.mapped.mapped_format(path) == whole_raw.format
    raw, version = read_verified(path)
    assert version == whole_version == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert (raw.wrapper_key, raw.ignored_keys) == (whole_raw.wrapper_key, whole_raw.ignored_keys)
    fresh = _fresh()
    load_weights(fresh, path)
    assert _same(fresh, model)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"truncated"):
        read_verified(path)
