"""The checkpoint pipeline: every save style round-trips, and every bad file is a clear error."""

from __future__ import annotations

import hashlib
import os
import socket
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn

from service.checkpoints.loading import (
    checkpoint_version,
    load_weights,
    match_state_dict,
    read_checkpoint,
    read_verified,
    shared_prefixes,
)
from service.errors import CheckpointError

NetFactory = Callable[..., nn.Module]
TaggedSave = Callable[[object, Path, str], None]


def _ddp_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A real DistributedDataParallel state_dict: gloo, world size 1, a free loopback port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        return nn.parallel.DistributedDataParallel(model).state_dict()
    finally:
        dist.destroy_process_group()


def _compiled(model: nn.Module) -> nn.Module:
    """torch.compile's wrapper (keys under ``_orig_mod.``); it never runs, so nothing compiles."""
    return cast(nn.Module, torch.compile(model))


def _training_extras(model: nn.Module) -> dict[str, Any]:
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    optimizer.step()
    return {"epoch": 3, "optimizer": optimizer.state_dict()}


# style -> (what torch.save gets, expected stripped prefix, expected wrapper key)
SAVE_STYLES: dict[str, tuple[Callable[[nn.Module], object], str, str | None]] = {
    "plain": (lambda m: m.state_dict(), "", None),
    "data_parallel": (lambda m: nn.DataParallel(m).state_dict(), "module.", None),
    "nested_data_parallel": (
        lambda m: nn.DataParallel(nn.DataParallel(m)).state_dict(),
        "module.module.",
        None,
    ),
    "ddp": (_ddp_state, "module.", None),
    "compile": (lambda m: _compiled(m).state_dict(), "_orig_mod.", None),
    "compile_data_parallel": (
        lambda m: _compiled(nn.DataParallel(m)).state_dict(),
        "_orig_mod.module.",
        None,
    ),
    "custom_prefix": (lambda m: {f"backbone.{k}": v for k, v in m.state_dict().items()}, "backbone.", None),
    "repeated_prefix": (
        lambda m: {f"encoder.body.{k}": v for k, v in m.state_dict().items()},
        "encoder.body.",
        None,
    ),
    "state_dict": (lambda m: {**_training_extras(m), "state_dict": m.state_dict()}, "", "state_dict"),
    "model_state_dict": (lambda m: {"model_state_dict": m.state_dict(), "epoch": 1}, "", "model_state_dict"),
    "model": (lambda m: {"model": nn.DataParallel(m).state_dict(), "step": 9}, "module.", "model"),
    "net": (lambda m: {"net": m.state_dict(), "best_acc": 0.9}, "", "net"),
    "other_single_key": (lambda m: {"weights": m.state_dict(), "epoch": 2}, "", "weights"),
    "known_key_preferred": (
        lambda m: {
            "teacher": {k: torch.zeros_like(v) for k, v in m.state_dict().items()},
            "state_dict": m.state_dict(),
        },
        "",
        "state_dict",
    ),
}


@pytest.mark.parametrize("style", list(SAVE_STYLES))
def test_each_save_style_round_trips(
    style: str, tmp_path: Path, make_net: NetFactory, images: torch.Tensor
) -> None:
    source = make_net(seed=0)
    to_save, prefix, wrapper = SAVE_STYLES[style]
    path = tmp_path / "model.pt"
    torch.save(to_save(source), path)
    expected = source(images)  # after saving: the "state_dict" style takes an optimizer step
    fresh = make_net(seed=1)
    untrained = fresh(images)
    report = load_weights(fresh, path)
    assert (report.stripped_prefix, report.wrapper_key) == (prefix, wrapper)
    assert torch.equal(fresh(images), expected)
    assert not torch.allclose(untrained, expected)


@pytest.mark.parametrize("name", ["model.safetensors", "model.bin"])
def test_safetensors_round_trips_by_suffix_or_header(
    name: str, tmp_path: Path, make_net: NetFactory, images: torch.Tensor
) -> None:
    source = make_net(seed=0)
    path = tmp_path / name
    save_file(source.state_dict(), path)
    fresh = make_net(seed=1)
    report = load_weights(fresh, path)
    assert (report.format, report.storage_devices) == ("safetensors", ("cpu",))
    assert torch.equal(fresh(images), source(images))


def test_legacy_torch_format_round_trips(tmp_path: Path, make_net: NetFactory, images: torch.Tensor) -> None:
    source = make_net(seed=0)
    path = tmp_path / "legacy.pt"
    torch.save(source.state_dict(), path, _use_new_zipfile_serialization=False)
    fresh = make_net(seed=1)
    load_weights(fresh, path)
    assert torch.equal(fresh(images), source(images))


@pytest.mark.parametrize("tag", ["cuda:1", "cuda:3"])
def test_tensors_saved_on_a_missing_gpu_load_on_cpu(
    tag: str, tmp_path: Path, make_net: NetFactory, images: torch.Tensor, tagged_save: TaggedSave
) -> None:
    source = make_net(seed=0)
    path = tmp_path / "gpu.pt"
    tagged_save(source.state_dict(), path, tag)
    if torch.cuda.device_count() <= int(tag.split(":")[1]):
        with pytest.raises(RuntimeError, match="CUDA"):  # the file really says cuda
            torch.load(path, weights_only=True)
    assert read_checkpoint(path).storage_devices == (tag,)
    fresh = make_net(seed=1)
    report = load_weights(fresh, path, device="cpu")
    assert report.storage_devices == (tag,)
    assert {t.device.type for t in fresh.state_dict().values()} == {"cpu"}
    assert torch.equal(fresh(images), source(images))


def test_batchnorm_stats_and_dropout_follow_eval_mode(
    tmp_path: Path, make_net: NetFactory, images: torch.Tensor
) -> None:
    source = make_net(seed=0)
    path = tmp_path / "model.pt"
    torch.save(source.state_dict(), path)
    fresh = make_net(seed=1).train()
    load_weights(fresh, path)
    assert not fresh.training
    assert not any(p.requires_grad for p in fresh.parameters())
    running_mean = fresh.get_buffer("bn.running_mean")
    assert torch.equal(running_mean, source.get_buffer("bn.running_mean"))
    assert not torch.equal(running_mean, torch.zeros_like(running_mean))
    assert torch.equal(fresh(images), source(images))
    assert not torch.allclose(fresh.train()(images), source(images))


def test_report_describes_what_was_loaded(tmp_path: Path, make_net: NetFactory) -> None:
    source = make_net(seed=0)
    path = tmp_path / "model.pt"
    torch.save({"state_dict": source.state_dict(), "epoch": 1}, path)
    report = load_weights(make_net(seed=1), path)
    assert report.path == path
    assert report.version == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert report.format == "torch"
    assert report.parameter_count == sum(p.numel() for p in source.parameters())
    assert report.dtypes == ("float32", "int64")
    assert read_checkpoint(path).ignored_keys == ("epoch",)


def test_version_is_the_sha256_prefix(tmp_path: Path) -> None:
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    first.write_bytes(b"x" * 3_000_000)  # more than one read chunk
    second.write_bytes(b"y")
    assert checkpoint_version(first) == hashlib.sha256(first.read_bytes()).hexdigest()[:12]
    assert checkpoint_version(first) != checkpoint_version(second)
    with pytest.raises(CheckpointError, match=r"missing\.pt"):
        checkpoint_version(tmp_path / "missing.pt")


def test_loads_beside_a_serving_copy(
    tmp_path: Path, make_net: NetFactory, images: torch.Tensor, tagged_save: TaggedSave
) -> None:
    """Hot reload: concurrent loads share nothing with each other or with the serving copy."""
    serving, new_cpu, new_gpu = make_net(seed=0), make_net(seed=1), make_net(seed=2)
    torch.save(serving.state_dict(), tmp_path / "v1.pt")
    load_weights(serving, tmp_path / "v1.pt")
    serving_answer = serving(images)
    torch.save(make_net(seed=3).state_dict(), tmp_path / "v2.pt")
    tagged_save(make_net(seed=4).state_dict(), tmp_path / "v3.pt", "cuda:1")
    with ThreadPoolExecutor(2) as pool:
        cpu_load = pool.submit(load_weights, new_cpu, tmp_path / "v2.pt")
        gpu_load = pool.submit(load_weights, new_gpu, tmp_path / "v3.pt")
        assert cpu_load.result().storage_devices == ("cpu",)
        assert gpu_load.result().storage_devices == ("cuda:1",)
    assert torch.equal(serving(images), serving_answer)
    serving_storage = {p.data_ptr() for p in serving.parameters()}
    assert not serving_storage & {p.data_ptr() for p in new_cpu.parameters()}
    assert not torch.allclose(new_cpu(images), serving_answer)


def test_wrong_shapes_name_the_keys_and_suggest_init_args(tmp_path: Path, make_net: NetFactory) -> None:
    path = tmp_path / "model.pt"
    torch.save(nn.DataParallel(make_net(seed=0, num_classes=3)).state_dict(), path)
    with pytest.raises(CheckpointError) as caught:
        load_weights(make_net(seed=1, num_classes=5), path)
    message = caught.value.message
    assert "0 missing, 0 unexpected, 2 with the wrong shape" in message
    assert "fc.weight: checkpoint [3, 16], model [5, 16]" in message
    assert "fc.bias: checkpoint [3], model [5]" in message
    assert "stripping the prefix 'module.'" in message
    assert "num_classes" in message


def test_missing_and_unexpected_keys_are_named(tmp_path: Path, make_net: NetFactory) -> None:
    state = make_net(seed=0).state_dict()
    del state["bn.running_var"]
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "model.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as caught:
        load_weights(make_net(seed=1), path)
    message = caught.value.message
    assert "1 missing, 1 unexpected, 0 with the wrong shape" in message
    assert "missing from the checkpoint (1):\n    bn.running_var" in message
    assert "unexpected in the checkpoint (1):\n    extra.weight" in message


def test_long_mismatch_lists_are_cut_with_a_count(make_net: NetFactory) -> None:
    match = match_state_dict(nn.Linear(16, 3).state_dict(), make_net(seed=0))
    assert (len(match.missing), match.unexpected) == (9, ("weight", "bias"))
    report = match.describe()
    assert "missing from the checkpoint (9):" in report
    assert "... and 4 more" in report
    assert "hint:" in report


def test_a_prefix_is_not_stripped_when_keys_already_match(make_net: NetFactory) -> None:
    wrapped = nn.Sequential(OrderedDict(module=make_net(seed=0)))  # own keys start "module."
    match = match_state_dict(wrapped.state_dict(), nn.Sequential(OrderedDict(module=make_net(1))))
    assert match.ok
    assert match.stripped_prefix == ""


def test_a_prefix_that_does_not_make_every_key_match_is_kept(tmp_path: Path, make_net: NetFactory) -> None:
    state = {f"module.{k}": v for k, v in make_net(seed=0).state_dict().items() if not k.startswith("fc.")}
    path = tmp_path / "model.pt"
    torch.save(state, path)
    match = match_state_dict(state, make_net(seed=1))
    assert (match.stripped_prefix, match.rejected_prefixes) == ("", ("module.",))
    assert "module.conv.weight" in match.unexpected
    with pytest.raises(CheckpointError, match=r"starts with 'module\.'.*nothing was stripped"):
        load_weights(make_net(seed=1), path)


def test_shared_prefixes() -> None:
    assert shared_prefixes(["a.b.c", "a.b.d"]) == ("a.", "a.b.")
    assert shared_prefixes(["a.b", "c.d"]) == ()
    assert shared_prefixes(["weight"]) == ()
    assert shared_prefixes([]) == ()


class _Versioned(nn.Linear):
    """Records the version its ``_load_from_state_dict`` sees, as torchvision migrations use."""

    _version = 2
    seen_versions: list[object]

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any], *args: Any
    ) -> None:
        self.seen_versions.append(local_metadata.get("version"))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


def test_stripping_keeps_module_versions_for_migrations(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(nn.DataParallel(_Versioned(2, 2)).state_dict(), path)
    fresh = _Versioned(2, 2)
    fresh.seen_versions = []
    load_weights(fresh, path)
    assert fresh.seen_versions == [2]


def _write_truncated(path: Path) -> None:
    torch.save(nn.Linear(64, 64).state_dict(), path)
    path.write_bytes(path.read_bytes()[:2000])


BAD_FILES: dict[str, tuple[Callable[[Path], object], str]] = {
    "empty": (lambda p: p.write_bytes(b""), "is empty"),
    "truncated": (_write_truncated, "truncated or corrupt"),
    "random_bytes": (lambda p: p.write_bytes(bytes(range(7, 256)) * 8), "is not a checkpoint"),
    "text": (lambda p: p.write_text("weights: none\n"), "starts with b'weights:'"),
    "torch_list": (lambda p: torch.save([1, 2, 3], p), "holds a list, not a state_dict"),
    "no_tensors": (
        lambda p: torch.save({"epoch": 3, "lr": 0.1}, p),
        "no tensors.*top-level keys: 'epoch', 'lr'",
    ),
    "two_tensor_dicts": (
        lambda p: torch.save({"a": {"w": torch.ones(1)}, "b": {"w": torch.ones(1)}}, p),
        "several dicts of tensors \\('a', 'b'\\)",
    ),
    "truncated_safetensors": (
        lambda p: p.write_bytes(b"\x40" + b"\0" * 7 + b'{"w": {"dtype": "F32"'),
        "as safetensors",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_files_are_clear_errors(kind: str, tmp_path: Path, make_net: NetFactory) -> None:
    write, expected = BAD_FILES[kind]
    path = tmp_path / f"{kind}.safetensors" if "safetensors" in kind else tmp_path / f"{kind}.pt"
    write(path)
    with pytest.raises(CheckpointError, match=expected) as caught:
        load_weights(make_net(seed=0), path)
    assert str(path) in caught.value.message


def test_missing_file_and_a_folder_without_a_checkpoint(tmp_path: Path, make_net: NetFactory) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(make_net(seed=0), tmp_path / "nope.pt")
    (tmp_path / "notes.txt").write_text("no weights here")
    with pytest.raises(CheckpointError, match=r"holds no checkpoint file"):
        read_checkpoint(tmp_path)


def test_malicious_torch_file_is_refused(malicious_torch: Path, marker: Path) -> None:
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(malicious_torch)
    message = caught.value.message
    assert "needs arbitrary unpickling" in message
    assert "system" in message  # the offending global is named
    assert "`trust_pickle: true`" in message
    assert not marker.exists()


@pytest.mark.parametrize("trust_pickle", [False, True])
def test_plain_pickle_is_never_unpickled(trust_pickle: bool, malicious_pickle: Path, marker: Path) -> None:
    with pytest.raises(CheckpointError, match="plain Python pickle"):
        read_checkpoint(malicious_pickle, trust_pickle=trust_pickle)
    assert not marker.exists()


@pytest.mark.parametrize("wrap", [False, True])
def test_full_module_pickle_needs_trust(
    wrap: bool, tmp_path: Path, make_net: NetFactory, images: torch.Tensor
) -> None:
    source = make_net(seed=0)
    path = tmp_path / "full.pt"
    torch.save({"model": source, "epoch": 1} if wrap else source, path)
    with pytest.raises(CheckpointError, match=r"Sequential.*trust_pickle"):
        load_weights(make_net(seed=1), path)
    fresh = make_net(seed=1)
    report = load_weights(fresh, path, trust_pickle=True)
    assert report.wrapper_key == ("model" if wrap else None)
    assert torch.equal(fresh(images), source(images))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_loads_onto_cuda0_whatever_the_saved_device(
    suffix: str, tmp_path: Path, make_net: NetFactory, images: torch.Tensor, tagged_save: TaggedSave
) -> None:
    source = make_net(seed=0)
    path = tmp_path / f"model{suffix}"
    if suffix == ".pt":
        tagged_save(source.state_dict(), path, "cuda:3")
    else:
        save_file(source.state_dict(), path)
    fresh = make_net(seed=1)
    load_weights(fresh, path, device="cuda:0")
    assert {str(t.device) for t in fresh.state_dict().values()} == {"cuda:0"}
    torch.testing.assert_close(fresh(images.cuda()).cpu(), source(images))


# Whole files only: torn writes, digests beside the file, and paths that must never be opened.


def _two_saves(tmp_path: Path, make_net: NetFactory) -> tuple[bytes, bytes]:
    """The bytes of two torch.save files of one architecture, different weights, same layout."""
    old, new = tmp_path / "old" / "torn.pt", tmp_path / "new" / "torn.pt"  # same record names
    old.parent.mkdir(), new.parent.mkdir()
    torch.save(make_net(seed=0).state_dict(), old)
    torch.save(make_net(seed=1).state_dict(), new)
    assert len(old.read_bytes()) == len(new.read_bytes())
    return old.read_bytes(), new.read_bytes()


@pytest.mark.parametrize("fraction", [0.45, 0.7, 0.95])  # in the tensors, after them, in the zip index
def test_a_file_overwritten_in_place_halfway_is_refused(
    fraction: float, tmp_path: Path, make_net: NetFactory
) -> None:
    """The new file's first bytes over the old one's rest: torch.load alone would load the mix."""
    old, new = _two_saves(tmp_path, make_net)
    cut = int(len(new) * fraction)
    torn = tmp_path / "torn.pt"
    torn.write_bytes(new[:cut] + old[cut:])
    assert torn.read_bytes() not in (old, new)
    torch.load(torn, weights_only=True)  # the mix loads without complaint: what this guards
    with pytest.raises(CheckpointError, match=r"torn\.pt is not a whole torch checkpoint.*CRC"):
        read_verified(torn)


def test_a_file_cut_short_is_refused_as_not_whole(tmp_path: Path, make_net: NetFactory) -> None:
    _, new = _two_saves(tmp_path, make_net)
    short = tmp_path / "short.pt"
    for cut in (len(new) // 2, len(new) - 10):
        short.write_bytes(new[:cut])
        with pytest.raises(CheckpointError, match=r"not a whole torch checkpoint \(truncated or corrupt"):
            read_verified(short)


def test_a_zip_saved_without_crcs_still_loads(
    tmp_path: Path, make_net: NetFactory, images: torch.Tensor
) -> None:
    source = make_net(seed=0)
    path = tmp_path / "nocrc.pt"
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(source.state_dict(), path)
    finally:
        torch.serialization.set_crc32_options(True)
    fresh = make_net(seed=1)
    load_weights(fresh, path)
    assert torch.equal(fresh(images), source(images))


def test_safetensors_with_a_short_or_long_data_section_is_refused(
    tmp_path: Path, make_net: NetFactory
) -> None:
    path = tmp_path / "model.safetensors"
    save_file(make_net(seed=0).state_dict(), path)
    whole = path.read_bytes()
    data_bytes = len(whole) - 8 - int.from_bytes(whole[:8], "little")
    for change in (-4, 4):
        path.write_bytes(whole[:-4] if change < 0 else whole + b"\0" * 4)
        expected = f"tensor data but the file holds {data_bytes + change} "
        with pytest.raises(
            CheckpointError, match=f"as safetensors: its header describes {data_bytes} .*{expected}"
        ):
            read_verified(path)


def _sidecar(path: Path, text: str) -> None:
    path.with_name(path.name + ".sha256").write_text(text)


def test_a_matching_sha256_file_loads_in_every_sha256sum_form(tmp_path: Path, make_net: NetFactory) -> None:
    path = tmp_path / "model.pt"
    torch.save(make_net(seed=0).state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    for text in (digest, f"{digest}  model.pt\n", f"{digest.upper()} *model.pt\n", f"\\{digest}  a\\nb\n"):
        _sidecar(path, text)
        assert read_verified(path)[1] == digest[:12]


def test_a_sha256_mismatch_names_both_digests(tmp_path: Path, make_net: NetFactory) -> None:
    path = tmp_path / "model.pt"
    torch.save(make_net(seed=0).state_dict(), path)
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    wrong = hashlib.sha256(b"another file").hexdigest()
    _sidecar(path, f"{wrong}  model.pt\n")
    for load in (read_verified, read_checkpoint, lambda p: load_weights(make_net(seed=1), p)):
        with pytest.raises(CheckpointError) as caught:
            load(path)
        message = caught.value.message
        assert f"SHA-256 is {actual[:12]}" in message and f"says {wrong[:12]}" in message, message
        assert "model.pt.sha256" in message


@pytest.mark.parametrize("text", ["", "not a digest\n", "abc123  model.pt\n", "SHA256 (model.pt) = 00"])
def test_a_malformed_sha256_file_is_refused(text: str, tmp_path: Path, make_net: NetFactory) -> None:
    path = tmp_path / "model.pt"
    torch.save(make_net(seed=0).state_dict(), path)
    _sidecar(path, text)
    with pytest.raises(CheckpointError, match="is not a SHA-256 digest in sha256sum format"):
        read_verified(path)


def _refused_quickly(read: Callable[[], object], fifo: Path, match: str) -> None:
    """``read`` raises CheckpointError(match) within seconds; run in a thread so that a read
    blocked on ``fifo`` fails the test (and is then unblocked) instead of hanging it."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(read)
        try:
            error = future.exception(timeout=5)
        finally:
            if not future.done():  # an open blocked waiting for a writer: be that writer
                with fifo.open("wb"):
                    pass
    assert isinstance(error, CheckpointError), error
    assert match in error.message, error.message


@pytest.mark.parametrize("read", [read_verified, read_checkpoint, checkpoint_version])
def test_a_fifo_is_refused_without_blocking(read: Callable[[Path], object], tmp_path: Path) -> None:
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    _refused_quickly(lambda: read(fifo), fifo, "is not a file (it is a FIFO)")


def test_a_fifo_as_the_sha256_file_is_refused_without_blocking(tmp_path: Path, make_net: NetFactory) -> None:
    path = tmp_path / "model.pt"
    torch.save(make_net(seed=0).state_dict(), path)
    fifo = tmp_path / "model.pt.sha256"
    os.mkfifo(fifo)
    _refused_quickly(lambda: read_verified(path), fifo, "model.pt.sha256 is not a file (it is a FIFO)")
