"""Checkpoints of today's training stacks served: every answer equals the same weights run in-process.

Each checkpoint is written with the real tool (``dcp.save``, FSDP2 on two gloo ranks, sharded
safetensors/.bin with an index, timm-style EMA dicts, ``AveragedModel``, half precision); each
refusal is checked at start and on reload, with the old version still serving.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from torch import nn

from service.checkpoints.layout import checkpoint_version
from service.errors import CheckpointError
from tests.support.formats import FORMATS, dcp_folder, timm_file
from tests.support.harness import ADMIN, model_entry, png, serving, write_config
from tests.support.loadgen import PNG, matches, reference_scores
from tests.support.training import ARCH, ARGS, fsdp2_save, save_dcp, save_sharded, trained
from tests.support.waiting import await_until

IMAGES = [png(v) for v in (0, 90, 200)] + [png(None, seed=1), png(None, size=(31, 9), seed=2)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _entry(checkpoint: str, **overrides: Any) -> dict[str, Any]:
    return model_entry(ARCH, checkpoint, init_args=ARGS, cpu_replicas=1, **overrides)


async def _assert_serves(client: httpx.AsyncClient, name: str, reference: nn.Module) -> str:
    """Every image's served scores equal ``reference``'s in-process ones; returns the version."""
    expected = reference_scores(reference, IMAGES)
    version = ""
    for image, wanted in zip(IMAGES, expected, strict=True):
        answer = await client.post(f"/predict?model={name}&top_k=3", content=image, headers=PNG)
        assert answer.status_code == 200, answer.text
        assert matches(answer.json()["predictions"][0], wanted), (name, answer.json(), wanted)
        version = answer.json()["version"]
    return version


@pytest.mark.anyio
async def test_every_format_serves_the_weights_it_holds(tmp_path: Path) -> None:
    models, references = {}, {}
    for name, (write, overrides) in FORMATS.items():
        checkpoint, references[name] = write(tmp_path)
        models[name] = _entry(checkpoint, **overrides)
    async with serving(write_config(tmp_path, models)) as (client, _):
        for name, reference in references.items():
            version = await _assert_serves(client, name, reference)
            assert version == checkpoint_version(tmp_path / models[name]["checkpoint"])


@pytest.mark.slow
@pytest.mark.anyio
async def test_an_fsdp2_checkpoint_of_two_ranks_serves(tmp_path: Path) -> None:
    full = fsdp2_save(tmp_path / "fsdp2", seed=11)
    async with serving(write_config(tmp_path, {"m": _entry("fsdp2")})) as (client, _):
        await _assert_serves(client, "m", full)


def _missing_shard(root: Path) -> tuple[str, str]:
    index = save_sharded(trained(seed=12)[0].state_dict(), root / "bad", kind="safetensors")
    shard = sorted(index.parent.glob("*-of-*"))[-1]
    shard.unlink()
    return "bad", shard.name


def _truncated_shard(root: Path) -> tuple[str, str]:
    index = save_sharded(trained(seed=13)[0].state_dict(), root / "bad", kind="bin")
    shard = sorted(index.parent.glob("*-of-*"))[0]
    shard.write_bytes(shard.read_bytes()[:-64])
    return "bad", shard.name


def _truncated_distcp(root: Path) -> tuple[str, str]:
    model, optimizer = trained(seed=14)
    save_dcp({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, root / "bad")
    shard = next((root / "bad").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-16])
    return "bad", shard.name


def _no_metadata(root: Path) -> tuple[str, str]:
    save_dcp({"model": trained(seed=15)[0].state_dict()}, root / "bad")
    (root / "bad" / ".metadata").unlink()
    return "bad", ".metadata"


def _two_files(root: Path) -> tuple[str, str]:
    (root / "bad").mkdir()
    for name in ("best.pt", "last.pt"):
        torch.save(trained(seed=16)[0].state_dict(), root / "bad" / name)
    return "bad", "best.pt, last.pt"


REFUSALS: dict[str, Callable[[Path], tuple[str, str]]] = {
    "missing-shard": _missing_shard,
    "truncated-shard": _truncated_shard,
    "truncated-distcp": _truncated_distcp,
    "dcp-without-metadata": _no_metadata,
    "two-weights-files": _two_files,
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", list(REFUSALS))
async def test_a_broken_checkpoint_is_a_startup_error_naming_the_file(tmp_path: Path, case: str) -> None:
    checkpoint, named = REFUSALS[case](tmp_path)
    with pytest.raises(CheckpointError) as caught:
        async with serving(write_config(tmp_path, {"m": _entry(checkpoint)})):
            pass
    assert named in caught.value.message, caught.value.message


@pytest.mark.anyio
async def test_an_unknown_state_dict_key_is_a_startup_error_listing_the_entries(tmp_path: Path) -> None:
    checkpoint, _ = timm_file(tmp_path, "ema")
    with pytest.raises(CheckpointError, match=r"'teacher' is not an entry .*'state_dict', 'state_dict_ema'"):
        async with serving(write_config(tmp_path, {"m": _entry(checkpoint, state_dict_key="teacher")})):
            pass


@pytest.mark.anyio
async def test_a_refused_reload_keeps_the_old_version_serving(tmp_path: Path) -> None:
    checkpoint, reference = dcp_folder(tmp_path)
    async with serving(write_config(tmp_path, {"m": _entry(checkpoint)})) as (client, _):
        before = await _assert_serves(client, "m", reference)
        for case, write in REFUSALS.items():
            bad, named = write(tmp_path)
            answer = await client.post("/models/m/reload", json={"checkpoint": bad}, headers=ADMIN)
            assert answer.status_code == 422, (case, answer.text)
            assert named in answer.json()["error"]["message"], (case, answer.text)
            assert await _assert_serves(client, "m", reference) == before
            shutil.rmtree(tmp_path / "bad")


@pytest.mark.anyio
async def test_watch_on_a_folder_reloads_only_once_every_shard_is_there(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, _ = trained(seed=17)
    second, _ = trained(seed=18)
    index = save_sharded(first.state_dict(), tmp_path / "hf", kind="safetensors")
    config = write_config(tmp_path, {"w": _entry("hf", watch=True)}, server={"watch_interval_s": 0.05})
    async with serving(config) as (client, _):
        assert await _assert_serves(client, "w", first) == checkpoint_version(index)
        save_sharded(second.state_dict(), tmp_path / "next", kind="safetensors")
        shards = sorted((tmp_path / "next").glob("*-of-*"))
        with caplog.at_level(logging.ERROR, logger="service.checkpoints.watcher"):
            (index.parent / shards[0].name).unlink()  # a shard missing: tried once, refused, counted
            await _wait_for(client, lambda text: _reloads(text, "failure") >= 1, "the failure is counted")
        assert any(shards[0].name in record.getMessage() for record in caplog.records)
        await _assert_serves(client, "w", first)
        for shard in shards:  # the rest of the new save arrives: it serves
            shutil.copyfile(shard, index.parent / shard.name)
        await _wait_for(client, lambda text: _reloads(text, "success") >= 1, "the complete folder is loaded")
        assert await _assert_serves(client, "w", second) == checkpoint_version(index)


async def _wait_for(client: httpx.AsyncClient, condition: Callable[[str], bool], what: str) -> None:
    async def holds() -> bool:
        return condition((await client.get("/metrics")).text)

    await await_until(holds, 10, what, poll_s=0.05)


def _reloads(text: str, outcome: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "model_serve_reloads_total" and sample.labels.get("outcome") == outcome:
                return float(sample.value)
    return 0.0
