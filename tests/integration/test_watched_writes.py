"""A watched checkpoint serves only once it is whole, on a real server (issue 24, row 4).

A ``.safetensors`` file with no ``.sha256`` rewritten in place (``r+b``) with 3/4 of a
same-architecture replacement, then a pause of many watch intervals: its size never changes and
its header is the new one, so only the quiet period tells it from a whole file. The old model
keeps answering throughout (each answer checked against the old weights in-process), the mix
is never loaded, and once the write ends and holds still the new model answers, with a warning
that says how to publish safely (none for a file renamed into place). A ``.pt`` and a
``.safetensors`` cut short and left so: a warning naming the file and why, one
``model_serve_reloads_total{outcome="incomplete"}``, no reload attempted, the old model serving.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import safetensors.torch
import torch
from prometheus_client.parser import text_string_to_metric_families

from service.checkpoints.architecture import build_model
from tests.support.harness import model_entry, png, write_config
from tests.support.loadgen import PNG, matches, reference_scores, wait_until
from tests.support.serving import ServerProcess

ARCH = "tests.support.archs:slow_classifier"
ARGS = {"delay_s": 0.0, "in_channels": 1, "num_classes": 64}
IMAGES = [png(v) for v in (0, 90, 200)] + [png(None, seed=3)]
WATCH_INTERVAL_S = 0.1
QUIET_S = 2.0
PAUSE_S = 1.0  # ten watch intervals, inside the quiet period
FILES = {"s": "s.safetensors", "p": "p.pt"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


@dataclass
class Weights:
    """Two seeds' weights as each format's bytes, and every version's reference scores."""

    files: dict[str, list[bytes]]  # suffix -> bytes per seed
    refs: dict[str, list[list[float]]]  # version -> per image probabilities


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ARCH, ARGS).eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Weights:
    scratch = tmp_path_factory.mktemp("weights")
    files: dict[str, list[bytes]] = {".pt": [], ".safetensors": []}
    refs = {}
    for seed in (0, 1):
        model = _model(seed)
        torch.save(model.state_dict(), scratch / f"{seed}.pt")
        files[".pt"].append((scratch / f"{seed}.pt").read_bytes())
        files[".safetensors"].append(safetensors.torch.save(model.state_dict()))
        for data in (files[".pt"][-1], files[".safetensors"][-1]):
            refs[_sha(data)] = reference_scores(model, IMAGES)
    return Weights(files, refs)


@pytest.fixture(scope="module")
def server(weights: Weights, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("watched")
    (base / "ckpt").mkdir()
    models = {}
    for name, file in FILES.items():
        (base / "ckpt" / file).write_bytes(weights.files[Path(file).suffix][0])
        models[name] = model_entry(ARCH, f"ckpt/{file}", init_args=ARGS, watch=True)
    watch = {"watch_interval_s": WATCH_INTERVAL_S, "watch_quiet_s": QUIET_S}
    config = write_config(base, models, checkpoint_root="ckpt", server=watch)
    with ServerProcess(config, base / "server.log") as process:
        yield process


def _watched(server: ServerProcess, name: str) -> Path:
    return server.log_path.parent / "ckpt" / FILES[name]


def _served_versions(server: ServerProcess, name: str, weights: Weights) -> set[str]:
    """The versions the images are answered with, each answer checked against its weights
    (two while a swap lands in between)."""
    versions = set()
    for index, image in enumerate(IMAGES):
        answer = httpx.post(
            f"{server.url}/predict?model={name}&top_k=5", content=image, headers=PNG, timeout=10
        )
        assert answer.status_code == 200, answer.text
        version = answer.json()["version"]
        assert version in weights.refs, f"answered with version {version}: no whole file has it"
        assert matches(answer.json()["predictions"][0], weights.refs[version][index])
        versions.add(version)
    return versions


def _reloads(server: ServerProcess, name: str, outcome: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "model_serve_reloads_total" and sample.labels == {
                "model": name,
                "outcome": outcome,
            }:
                return float(sample.value)
    raise AssertionError(f"no model_serve_reloads_total for {name} {outcome}")


def _next(weights: Weights, path: Path) -> bytes:
    """The other seed's file of ``path``'s format: what the test writes over it."""
    same_format = weights.files[path.suffix]
    return same_format[1] if path.read_bytes() == same_format[0] else same_format[0]


def test_a_safetensors_file_rewritten_in_place_serves_only_once_whole(
    server: ServerProcess, weights: Weights
) -> None:
    path = _watched(server, "s")
    old, new = path.read_bytes(), _next(weights, path)
    assert len(old) == len(new) and old[:8] == new[:8], "same architecture: one size, one header"
    cut = len(new) * 3 // 4
    mixed = new[:cut] + old[cut:]
    mixed_model = _model(0)
    mixed_model.load_state_dict(safetensors.torch.load(mixed))
    mixed_scores = reference_scores(mixed_model, IMAGES)
    assert all(mixed_scores != weights.refs[_sha(data)] for data in (old, new)), "the mix must be told apart"
    assert _served_versions(server, "s", weights) == {_sha(old)}

    with path.open("r+b", buffering=0) as file:
        file.write(new[:cut])
        paused = time.monotonic()
        while time.monotonic() - paused < PAUSE_S:  # the writer's pause: the old model answers
            assert _served_versions(server, "s", weights) == {_sha(old)}
        assert _served_versions(server, "s", weights) == {_sha(old)}  # and still, past the pause
        file.write(new[cut:])

    wait_until(
        lambda: _served_versions(server, "s", weights) == {_sha(new)}, 15, "the whole new file serving"
    )
    assert _sha(mixed) not in server.log(), "the mixed file was hashed or loaded"
    assert f"checkpoint {path} was rewritten in place with no .sha256" in server.log()
    assert _reloads(server, "s", "failure") == 0


@pytest.mark.parametrize(("name", "why"), [("p", "is not a whole torch checkpoint"), ("s", "tensor data")])
def test_a_checkpoint_cut_short_is_refused_named_and_counted(
    server: ServerProcess, weights: Weights, name: str, why: str
) -> None:
    path = _watched(server, name)
    old, new = path.read_bytes(), _next(weights, path)
    refused, failed = _reloads(server, name, "incomplete"), _reloads(server, name, "failure")

    path.write_bytes(new[: len(new) // 2])  # cut short, and left so
    wait_until(lambda: _reloads(server, name, "incomplete") > refused, 15, "the cut-short file refused")
    warning = next(
        line for line in server.log().splitlines() if f"watched checkpoint {path} is not loaded" in line
    )
    assert "WARNING" in warning and why in warning and "old version serving" in warning, warning
    assert _served_versions(server, name, weights) == {_sha(old)}
    assert _reloads(server, name, "failure") == failed, "the watcher handed a cut-short file to a reload"

    path.write_bytes(new)  # the rest arrives
    wait_until(
        lambda: _served_versions(server, name, weights) == {_sha(new)}, 15, "the whole new file serving"
    )
    assert _reloads(server, name, "incomplete") == refused + 1


def test_a_file_renamed_into_place_loads_without_the_in_place_warning(
    server: ServerProcess, weights: Weights
) -> None:
    path = _watched(server, "p")
    new = _next(weights, path)
    warned = server.log().count(f"checkpoint {path} was rewritten in place")
    temporary = path.with_name(".p.pt.tmp")
    temporary.write_bytes(new)
    temporary.replace(path)
    wait_until(lambda: _served_versions(server, "p", weights) == {_sha(new)}, 15, "the renamed file serving")
    assert server.log().count(f"checkpoint {path} was rewritten in place") == warned
