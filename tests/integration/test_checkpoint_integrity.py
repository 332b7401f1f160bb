"""Only whole checkpoints are served, on a real server: torn writes, ``.sha256`` files, FIFOs.

A watched checkpoint overwritten in place in chunks, with clients predicting and reloading
throughout, must never produce an answer whose version is not one of the whole files written
(each answer is also checked against that version's reference scores), and manual reloads
during the write are refused or load a whole file. A ``.sha256`` beside a checkpoint gates
every load. A FIFO at the watched path neither blocks the server nor its shutdown.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from tests.support.harness import ADMIN, model_entry, png, write_config
from tests.support.loadgen import PNG, Load, matches, reference_scores, wait_until
from tests.support.serving import ServerProcess

ARCH = "tests.support.archs:slow_classifier"
ARGS = {"delay_s": 0.0, "in_channels": 1, "num_classes": 64}
IMAGES = [png(v) for v in (0, 90, 200)] + [png(None, seed=3)]
WATCH_INTERVAL_S = 0.05
CHUNK_BYTES = 700
CHUNK_PAUSE_S = 0.15  # several polls: a half-written file looks settled to the watcher


@dataclass
class Files:
    """Whole checkpoint files of one layout (same size, same record names), by version."""

    root: Path
    data: list[bytes]
    refs: dict[str, list[list[float]]]  # version -> per image probabilities

    def version(self, index: int) -> str:
        return hashlib.sha256(self.data[index]).hexdigest()[:12]


def _make_files(base: Path, count: int) -> Files:
    from service.checkpoints.architecture import build_model

    root = base / "ckpt"
    root.mkdir()
    data, refs = [], {}
    for seed in range(count):
        torch.manual_seed(seed)
        model = build_model(ARCH, ARGS).eval()
        scratch = base / f"seed{seed}"  # torch names the zip's records after the file: keep "w.pt"
        scratch.mkdir()
        torch.save(model.state_dict(), scratch / "w.pt")
        data.append((scratch / "w.pt").read_bytes())
        refs[hashlib.sha256(data[-1]).hexdigest()[:12]] = reference_scores(model, IMAGES)
    assert len({len(d) for d in data}) == 1, "the files must have one size for in-place overwrites"
    return Files(root, data, refs)


def _server(files: Files, log: Path) -> ServerProcess:
    (files.root / "w.pt").write_bytes(files.data[0])
    (files.root / "m.pt").write_bytes(files.data[0])
    models = {
        "w": model_entry(ARCH, "ckpt/w.pt", init_args=ARGS, watch=True),
        "m": model_entry(ARCH, "ckpt/m.pt", init_args=ARGS),
    }
    config = write_config(
        files.root.parent,
        models,
        checkpoint_root="ckpt",
        # no quiet period: the watcher tries half-written files, and the reload's checks refuse them
        server={"watch_interval_s": WATCH_INTERVAL_S, "watch_quiet_s": 0},
    )
    return ServerProcess(config, log)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return _make_files(tmp_path_factory.mktemp("integrity"), 6)


@pytest.fixture(scope="module")
def server(files: Files) -> Iterator[ServerProcess]:
    with _server(files, files.root.parent / "server.log") as process:
        yield process


def _version(url: str, name: str) -> str:
    version: str = httpx.get(f"{url}/models/{name}", timeout=10).json()["version"]
    return version


def _failures(url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            labels = {"model": "w", "outcome": "failure"}
            if sample.name == "model_serve_reloads_total" and sample.labels == labels:
                return float(sample.value)
    return 0.0


def _overwrite_in_place(path: Path, data: bytes, truncate: bool) -> None:
    """What a careless publisher does: the same file rewritten in chunks, readable throughout."""
    with path.open("wb" if truncate else "r+b", buffering=0) as file:
        for start in range(0, len(data), CHUNK_BYTES):
            file.write(data[start : start + CHUNK_BYTES])
            time.sleep(CHUNK_PAUSE_S)  # the slow write under test: half-written files stay visible


def test_a_checkpoint_overwritten_in_place_is_never_served_half_written(
    server: ServerProcess, files: Files
) -> None:
    watched = files.root / "w.pt"
    whole = {files.version(i) for i in range(4)}
    failed = _failures(server.url)
    with (
        Load(_predict_on(server.url), threads=2, max_s=60) as predictions,
        Load(_reload_on(server.url), threads=1, max_s=60) as reloads,
    ):
        for n in (1, 2, 3):
            _overwrite_in_place(watched, files.data[n], truncate=n % 2 == 0)
    for outcome in predictions.outcomes:
        assert outcome.status == 200, outcome
        version = outcome.body["version"]
        assert version in whole, f"answered with version {version}: no whole file has it"
        assert matches(outcome.body["predictions"][0], files.refs[version][outcome.index % len(IMAGES)])
    refused = [o for o in reloads.outcomes if o.status != 200]
    for outcome in reloads.outcomes:
        if outcome.status == 200:
            assert outcome.body["version"] in whole, outcome
        else:
            assert outcome.status == 422 and outcome.body["error"]["code"] == "checkpoint_error", outcome
    print(f"{len(predictions.outcomes)} answers; {len(refused)} of {len(reloads.outcomes)} reloads refused")
    assert refused, "no reload landed on a half-written file: the test proves nothing"
    assert len(predictions.outcomes) > 20
    assert _failures(server.url) > failed, "the watcher never tried a half-written file"
    assert "is not a whole torch checkpoint" in server.log()
    wait_until(
        lambda: _version(server.url, "w") == files.version(3), 10, "the watcher loads the last whole file"
    )


def _predict_on(url: str) -> Callable[[httpx.Client, int], httpx.Response]:
    return lambda client, i: client.post(
        f"{url}/predict?model=w&top_k=3", content=IMAGES[i % len(IMAGES)], headers=PNG
    )


def _reload_on(url: str) -> Callable[[httpx.Client, int], httpx.Response]:
    def send(client: httpx.Client, i: int) -> httpx.Response:
        time.sleep(0.03)  # pacing of the reload loop, not a wait
        return client.post(f"{url}/models/w/reload", json={}, headers=ADMIN)

    return send


def _sidecar(path: Path, digest: str) -> None:
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")


def test_a_sha256_mismatch_refuses_the_reload_and_a_match_loads(server: ServerProcess, files: Files) -> None:
    before = _version(server.url, "m")
    candidate = files.root / "s.pt"
    candidate.write_bytes(files.data[4])
    wrong = hashlib.sha256(files.data[5]).hexdigest()
    _sidecar(candidate, wrong)
    answer = httpx.post(f"{server.url}/models/m/reload", json={"checkpoint": "s.pt"}, headers=ADMIN)
    assert answer.status_code == 422, answer.text
    message = answer.json()["error"]["message"]
    assert files.version(4) in message and wrong[:12] in message, message
    served = httpx.post(f"{server.url}/predict?model=m", content=IMAGES[0], headers=PNG).json()
    assert served["version"] == before
    _sidecar(candidate, hashlib.sha256(files.data[4]).hexdigest())
    answer = httpx.post(f"{server.url}/models/m/reload", json={"checkpoint": "s.pt"}, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == files.version(4)


def test_the_watcher_loads_once_the_sha256_written_last_matches(server: ServerProcess, files: Files) -> None:
    watched = files.root / "w.pt"
    serving = _version(server.url, "w")
    _sidecar(watched, hashlib.sha256(watched.read_bytes()).hexdigest())  # the file as it is now
    failed = _failures(server.url)
    new = next(i for i in range(len(files.data)) if files.version(i) != serving)
    watched.write_bytes(files.data[new])  # the .sha256 still describes the old content
    wait_until(lambda: _failures(server.url) > failed, 10, "the watcher tries the file and refuses it")
    assert _version(server.url, "w") == serving
    _sidecar(watched, hashlib.sha256(files.data[new]).hexdigest())  # published last
    wait_until(lambda: _version(server.url, "w") == files.version(new), 10, "the watcher loads the new file")


def test_a_fifo_at_the_watched_path_blocks_neither_serving_nor_shutdown(tmp_path: Path) -> None:
    files = _make_files(tmp_path, 1)
    process = _server(files, tmp_path / "server.log")
    with process:
        fifo = files.root / ".fifo"
        os.mkfifo(fifo)
        os.replace(fifo, files.root / "w.pt")
        deadline = time.monotonic() + 1.0  # twenty polls of the watcher
        while time.monotonic() < deadline:
            answer = httpx.post(f"{process.url}/predict?model=w", content=IMAGES[0], headers=PNG, timeout=5)
            assert answer.status_code == 200, answer.text
            assert answer.json()["version"] == files.version(0)
        reload = httpx.post(f"{process.url}/models/w/reload", json={}, headers=ADMIN, timeout=5)
        assert reload.status_code in (404, 422), reload.text
        started = time.monotonic()
        code = process.stop(timeout_s=20)
        took = time.monotonic() - started
    assert code == 0, process.log()[-2000:]
    assert took < 5, f"SIGTERM took {took:.1f} s"


def test_a_sha256_mismatch_at_start_up_stops_the_server(tmp_path: Path) -> None:
    files = _make_files(tmp_path, 2)
    _sidecar(files.root / "m.pt", hashlib.sha256(files.data[1]).hexdigest())  # m.pt will hold data[0]
    process = _server(files, tmp_path / "server.log")
    try:
        code = process.process.wait(60)
    finally:
        process.stop()
    assert code == 1
    assert "does not match m.pt.sha256" in process.log()
