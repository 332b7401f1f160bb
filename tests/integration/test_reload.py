"""Hot reload with zero dropped requests: swaps under load, refusals, serialisation, rollback, watch.

The real-server tests share one ``model-serve`` process (module scope) whose model ``m`` is
reloaded between two checkpoints A and B of one tiny architecture; every answer is checked
against an in-process reference of the version it reports, so a mixed or mislabelled answer
fails, not only a non-200 one.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

import service.checkpoints.loading
import service.checkpoints.watcher
from service.checkpoints.watcher import watch_checkpoint
from tests.support.harness import ADMIN, model_entry, png, save_random_weights, serving, write_config
from tests.support.loadgen import PNG, Load, file_version, matches, reference_scores, wait_until
from tests.support.serving import ServerProcess
from tests.support.waiting import await_until

ARCH = "tests.support.archs:slow_classifier"
ARGS = {"delay_s": 0.003, "in_channels": 1, "num_classes": 3}
IMAGES = [png(v) for v in (0, 40, 90, 140, 200, 255)] + [png(None, seed=3), png(None, size=(33, 7), seed=4)]


@dataclass
class Checkpoints:
    """The checkpoint folder, its files, and the reference scores of each version."""

    base: Path
    root: Path
    versions: dict[str, str]  # file name -> version
    refs: dict[str, list[list[float]]]  # version -> per image probabilities


def _make_checkpoints(base: Path) -> Checkpoints:
    root = base / "ckpt"
    versions, refs = {}, {}
    for name, seed in (("a.pt", 1), ("b.pt", 2)):
        model = save_random_weights(ARCH, ARGS, root / name, seed=seed)
        versions[name] = file_version(root / name)
        refs[versions[name]] = reference_scores(model, IMAGES)
    (root / "w.pt").write_bytes((root / "a.pt").read_bytes())
    a, b = refs[versions["a.pt"]], refs[versions["b.pt"]]
    # the oracle must tell the versions apart on every image, or a mixed answer could pass
    assert all(
        max(abs(x - y) for x, y in zip(ra, rb, strict=True)) > 1e-3 for ra, rb in zip(a, b, strict=True)
    )
    return Checkpoints(base, root, versions, refs)


def _config(base: Path, *, watch_interval_s: float = 0.2) -> Path:
    batching = {"max_batch_size": 4}
    models = {
        "m": model_entry(ARCH, "ckpt/a.pt", init_args=ARGS, batching=batching),
        "w": model_entry(ARCH, "ckpt/w.pt", init_args=ARGS, batching=batching, watch=True),
    }
    watch = {"watch_interval_s": watch_interval_s, "watch_quiet_s": 0.5}
    return write_config(base, models, checkpoint_root="ckpt", server=watch)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    return _make_checkpoints(tmp_path_factory.mktemp("reload"))


@pytest.fixture(scope="module")
def server(ckpts: Checkpoints) -> Iterator[ServerProcess]:
    with ServerProcess(_config(ckpts.base), ckpts.base / "server.log") as process:
        yield process


def _reload(
    url: str, checkpoint: str | None, name: str = "m", headers: dict[str, str] = ADMIN
) -> httpx.Response:
    body = {} if checkpoint is None else {"checkpoint": checkpoint}
    return httpx.post(f"{url}/models/{name}/reload", json=body, headers=headers, timeout=30)


def _version(url: str, name: str = "m") -> str:
    answer = httpx.get(f"{url}/models/{name}")
    assert answer.status_code == 200, answer.text
    version: str = answer.json()["version"]
    return version


def _check_answers(
    load: Load, refs: dict[str, list[list[float]]], images_of: Callable[[int], list[int]]
) -> set[str]:
    """Every answer 200, of a known version, every image equal to that version's reference."""
    bad = [o for o in load.outcomes if o.status != 200]
    assert not bad, f"{len(bad)} of {len(load.outcomes)} failed, e.g. {bad[:3]}"
    seen = set()
    for outcome in load.outcomes:
        version = outcome.body["version"]
        assert version in refs, f"unknown version {version!r}"
        seen.add(version)
        predictions = outcome.body["predictions"]
        wanted = images_of(outcome.index)
        assert len(predictions) == len(wanted)
        for prediction, image in zip(predictions, wanted, strict=True):
            assert matches(prediction, refs[version][image]), (
                f"request {outcome.index} reports {version} but image {image} scored {prediction['top_k']}, "
                f"expected {refs[version][image]}"
            )
    return seen


def _swap_under_load(url: str, ckpts: Checkpoints, load: Load, swaps: int, between: int) -> None:
    """Alternate B, A, B, ... with at least ``between`` answers landing after each swap."""

    def answered(at_least: int) -> Callable[[], bool]:
        return lambda: load.count() >= at_least

    wait_until(answered(between), 20, "the first answers under load")
    for swap in range(swaps):
        target = "b.pt" if swap % 2 == 0 else "a.pt"
        answer = _reload(url, target)
        assert answer.status_code == 200, answer.text
        assert answer.json()["version"] == ckpts.versions[target]
        wait_until(answered(load.count() + between), 20, "answers after a swap")


def test_reloads_under_load_drop_nothing_and_never_mix(server: ServerProcess, ckpts: Checkpoints) -> None:
    assert _reload(server.url, "a.pt").status_code == 200

    def send(client: httpx.Client, i: int) -> httpx.Response:
        return client.post(
            f"{server.url}/predict?model=m&top_k=3", content=IMAGES[i % len(IMAGES)], headers=PNG
        )

    with Load(send, threads=4, max_requests=20_000, max_s=40) as load:
        _swap_under_load(server.url, ckpts, load, swaps=20, between=40)
    assert len(load.outcomes) >= 800
    seen = _check_answers(load, ckpts.refs, lambda i: [i % len(IMAGES)])
    assert seen == {ckpts.versions["a.pt"], ckpts.versions["b.pt"]}
    assert _version(server.url) == ckpts.versions["a.pt"]  # an even number of swaps: back on A


def test_a_multi_image_request_spanning_batches_reports_one_version(
    server: ServerProcess, ckpts: Checkpoints
) -> None:
    order = [*range(len(IMAGES)), 0, 7, 3]  # 11 images, max_batch_size 4: at least 3 batches
    files = [("file", (f"{n}.png", IMAGES[i], "image/png")) for n, i in enumerate(order)]

    def send(client: httpx.Client, i: int) -> httpx.Response:
        return client.post(f"{server.url}/predict?model=m&top_k=3", files=files)

    with Load(send, threads=3, max_requests=5_000, max_s=30) as load:
        _swap_under_load(server.url, ckpts, load, swaps=8, between=8)
    seen = _check_answers(load, ckpts.refs, lambda i: order)
    assert len(seen) == 2


def _evil(marker: Path) -> object:
    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    return {"weights": torch.zeros(1), "payload": Evil()}


def test_the_malicious_checkpoint_really_runs_code_when_unpickled(tmp_path: Path) -> None:
    """Guards the oracle of the refusal test: unpickled without weights_only, it does run."""
    marker = tmp_path / "ran"
    torch.save(_evil(marker), tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


@pytest.fixture(scope="module")
def bad_files(ckpts: Checkpoints) -> Path:
    """Refused files: wrong shapes, corrupt, truncated, pickles, NaN, links and files outside."""
    root = ckpts.root
    save_random_weights(ARCH, {**ARGS, "num_classes": 5}, root / "five.pt")
    (root / "junk.pt").write_bytes(os.urandom(4096))
    good = (root / "b.pt").read_bytes()
    (root / "half.pt").write_bytes(good[: len(good) // 2])
    marker = ckpts.base / "pwned"
    evil = _evil(marker)
    torch.save(evil, root / "evil.pt")  # torch.save pickles Evil by reference: nothing runs now
    (root / "evil.pkl").write_bytes(pickle.dumps(evil["payload"], protocol=2))  # type: ignore[index]
    nan = {k: torch.full_like(v, float("nan")) for k, v in torch.load(root / "b.pt").items()}
    torch.save(nan, root / "nan.pt")
    (root / "sub").mkdir()
    outside = ckpts.base / "outside"
    outside.mkdir()
    (outside / "x.pt").write_bytes(good)  # loadable: only the path rule may refuse it
    (ckpts.base / "x.pt").write_bytes(good)
    (root / "link.pt").symlink_to(outside / "x.pt")
    assert not marker.exists()
    return marker


REFUSALS = {
    # id: (model, body checkpoint, headers, status, code, words in the message)
    "no-token": ("m", "b.pt", {}, 401, "unauthorized", []),
    "wrong-token": ("m", "b.pt", {"Authorization": "Bearer nope"}, 401, "unauthorized", []),
    "wrong-shapes": ("m", "five.pt", ADMIN, 422, "checkpoint_error", ["head.weight", "head.bias", "shape"]),
    "corrupt": ("m", "junk.pt", ADMIN, 422, "checkpoint_error", ["junk.pt"]),
    "truncated": ("m", "half.pt", ADMIN, 422, "checkpoint_error", ["half.pt"]),
    "malicious-torch-save": ("m", "evil.pt", ADMIN, 422, "checkpoint_error", ["trust_pickle"]),
    "plain-pickle": ("m", "evil.pkl", ADMIN, 422, "checkpoint_error", ["pickle"]),
    "nan-weights": ("m", "nan.pt", ADMIN, 422, "checkpoint_error", ["non-finite"]),
    "dot-dot": ("m", "../x.pt", ADMIN, 403, "forbidden", [".."]),
    "absolute-elsewhere": ("m", "{base}/outside/x.pt", ADMIN, 403, "forbidden", ["checkpoint_root"]),
    "symlink-out": ("m", "link.pt", ADMIN, 403, "forbidden", ["checkpoint_root"]),
    "nul-byte": ("m", "b.pt\x00.txt", ADMIN, 403, "forbidden", []),
    "missing": ("m", "nope.pt", ADMIN, 404, "not_found", ["nope.pt"]),
    "folder-without-checkpoint": ("m", "sub", ADMIN, 422, "checkpoint_error", ["holds no checkpoint file"]),
    "unknown-model": ("nope", "b.pt", ADMIN, 404, "not_found", ["nope"]),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_reload_keeps_the_old_version_serving(
    server: ServerProcess, ckpts: Checkpoints, bad_files: Path, case: str
) -> None:
    assert _reload(server.url, "a.pt").status_code == 200
    before = _version(server.url)
    model, checkpoint, headers, status, code, words = REFUSALS[case]
    answer = _reload(server.url, checkpoint.format(base=ckpts.base), name=model, headers=headers)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code
    for word in words:
        assert word in error["message"], error["message"]
    _assert_still_serving(server.url, ckpts, before)
    assert not bad_files.exists(), "a refused checkpoint ran code while being read"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b'{"path": "b.pt"}', "application/json"),
        (b"[1, 2]", "application/json"),
        (b'{"checkpoint": 5}', "application/json"),
    ],
    ids=["not-json", "unknown-key", "not-an-object", "not-a-string"],
)
def test_bad_reload_body_is_422(
    server: ServerProcess, ckpts: Checkpoints, body: bytes, content_type: str
) -> None:
    before = _version(server.url)
    answer = httpx.post(
        f"{server.url}/models/m/reload", content=body, headers={**ADMIN, "Content-Type": content_type}
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "invalid_parameter"
    _assert_still_serving(server.url, ckpts, before)


def test_absolute_path_inside_root_and_default_reload(server: ServerProcess, ckpts: Checkpoints) -> None:
    answer = _reload(server.url, str(ckpts.root / "b.pt"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == ckpts.versions["b.pt"]
    default = _reload(server.url, None)  # no checkpoint: the configured one (a.pt), re-read
    assert default.status_code == 200, default.text
    assert default.json() == {
        "model": "m",
        "previous_version": ckpts.versions["b.pt"],
        "version": ckpts.versions["a.pt"],
        "changed": True,
    }
    _assert_still_serving(server.url, ckpts, ckpts.versions["a.pt"])


def _assert_still_serving(url: str, ckpts: Checkpoints, version: str) -> None:
    assert _version(url) == version
    answer = httpx.post(f"{url}/predict?model=m&top_k=3", content=IMAGES[1], headers=PNG)
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == version
    assert matches(answer.json()["predictions"][0], ckpts.refs[version][1])


def _metric(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_watch_reloads_a_replaced_file_and_refuses_a_corrupt_one(
    server: ServerProcess, ckpts: Checkpoints
) -> None:
    watched = ckpts.root / "w.pt"
    a, b = ckpts.versions["a.pt"], ckpts.versions["b.pt"]
    assert _version(server.url, "w") == a

    def replace(data: bytes) -> None:
        temporary = ckpts.root / ".w.pt.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, watched)

    def refusals() -> float:  # cut short or not a zip: refused before any reload
        return _metric(
            httpx.get(f"{server.url}/metrics").text,
            "model_serve_reloads_total",
            model="w",
            outcome="incomplete",
        )

    replace((ckpts.root / "b.pt").read_bytes())
    wait_until(lambda: _version(server.url, "w") == b, 10, "the watcher loads the replaced file")
    answer = httpx.post(f"{server.url}/predict?model=w&top_k=3", content=IMAGES[5], headers=PNG)
    assert answer.json()["version"] == b
    assert matches(answer.json()["predictions"][0], ckpts.refs[b][5])

    refused = refusals()
    replace(b"PK\x03\x04 this is not a checkpoint at all" * 50)
    wait_until(lambda: refusals() > refused, 10, "the watcher refuses the corrupt file and counts it")
    assert _version(server.url, "w") == b
    assert httpx.post(f"{server.url}/predict?model=w", content=IMAGES[0], headers=PNG).status_code == 200

    replace((ckpts.root / "a.pt").read_bytes())  # the watcher still runs after a refusal
    wait_until(lambda: _version(server.url, "w") == a, 10, "the watcher loads the next good file")


# In-process: the registry's serialisation and rollback, and the watcher on its own.


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _in_process_config(tmp_path: Path) -> tuple[Path, Checkpoints]:
    ckpts = _make_checkpoints(tmp_path)
    return _config(tmp_path), ckpts


@pytest.mark.anyio
async def test_concurrent_reloads_are_serialised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, ckpts = _in_process_config(tmp_path)
    async with serving(config) as (client, runtime):
        registry = runtime.registry
        original = registry._load_and_warm
        active, peak = 0, 0

        async def tracked(served: Any, checkpoint: Path, **options: Any) -> Any:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            try:
                await asyncio.sleep(0.05)  # widen the window a missing lock would show in
                return await original(served, checkpoint, **options)
            finally:
                active -= 1

        monkeypatch.setattr(registry, "_load_and_warm", tracked)
        targets = ["b.pt", "a.pt", "b.pt"]
        answers = await asyncio.gather(
            *(client.post("/models/m/reload", json={"checkpoint": t}, headers=ADMIN) for t in targets),
            *(client.post("/predict?model=m&top_k=3", content=IMAGES[i], headers=PNG) for i in range(4)),
        )
        final = (await client.get("/models/m")).json()
        success, unchanged = (
            runtime.metrics.registry.get_sample_value(
                "model_serve_reloads_total", {"model": "m", "outcome": outcome}
            )
            for outcome in ("success", "unchanged")
        )
    reloads, predictions = answers[:3], answers[3:]
    assert [a.status_code for a in reloads] == [200] * 3, [a.text for a in reloads]
    assert [a.status_code for a in predictions] == [200] * 4
    assert peak == 1, "two reloads of one model loaded at the same time"
    changed = [a.json()["changed"] for a in reloads]
    assert (success, unchanged) == (changed.count(True), changed.count(False))  # each counted once
    pairs = [(a.json()["previous_version"], a.json()["version"]) for a in reloads]
    assert sorted(p[1] for p in pairs) == sorted(ckpts.versions[t] for t in targets)
    start = ckpts.versions["a.pt"]
    chains = [
        order
        for order in itertools.permutations(pairs)
        if order[0][0] == start
        and all(order[i][0] == order[i - 1][1] for i in range(1, 3))
        and order[-1][1] == final["version"]
    ]
    assert chains, f"previous_version chain broken: {pairs}, final {final['version']}"
    swaps = [pair for pair in chains[0] if pair[0] != pair[1]]  # unchanged reloads keep the target
    assert final["previous_version"] == swaps[-1][0]


@pytest.mark.anyio
async def test_rollback_restores_the_previous_version_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, ckpts = _in_process_config(tmp_path)
    a, b = ckpts.versions["a.pt"], ckpts.versions["b.pt"]
    async with serving(config) as (client, runtime):
        first = await client.post("/models/m/rollback", headers=ADMIN)
        assert first.status_code == 422, first.text
        assert first.json()["error"]["code"] == "invalid_parameter"
        assert (await client.post("/models/m/rollback")).status_code == 401

        assert (
            await client.post("/models/m/reload", json={"checkpoint": "b.pt"}, headers=ADMIN)
        ).status_code == 200
        assert (await _predict(client, 2))["version"] == b

        async def no_loading(*args: object) -> None:
            raise AssertionError("rollback must not load from disk")

        monkeypatch.setattr(runtime.registry, "_load_and_warm", no_loading)
        (ckpts.root / "a.pt").unlink()  # rollback needs no file: the previous version is in memory
        back = await client.post("/models/m/rollback", headers=ADMIN)
        assert back.status_code == 200, back.text
        assert back.json() == {"model": "m", "previous_version": b, "version": a, "changed": True}
        for image in range(len(IMAGES)):
            body = await _predict(client, image)
            assert body["version"] == a
            assert matches(body["predictions"][0], ckpts.refs[a][image])
        described = (await client.get("/models/m")).json()
        assert (described["version"], described["previous_version"]) == (a, b)
        again = await client.post("/models/m/rollback", headers=ADMIN)  # toggles back to B
        assert again.json() == {"model": "m", "previous_version": a, "version": b, "changed": True}
        rollbacks = runtime.metrics.registry.get_sample_value(
            "model_serve_reloads_total", {"model": "m", "outcome": "rollback"}
        )
        info = runtime.metrics.registry.get_sample_value(
            "model_serve_model_info", {"model": "m", "version": b, "architecture": ARCH}
        )
    assert rollbacks == 2
    assert info == 1


async def _predict(client: httpx.AsyncClient, image: int) -> dict[str, Any]:
    answer = await client.post("/predict?model=m&top_k=3", content=IMAGES[image], headers=PNG)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


@pytest.mark.anyio
async def test_watcher_survives_a_file_it_cannot_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watched path that briefly is not a readable file must not end the watch."""
    path = tmp_path / "w.pt"
    path.write_bytes(b"one")
    reloaded: list[bytes] = []
    looks: list[Path] = []
    stamp = service.checkpoints.watcher._stamp
    monkeypatch.setattr(service.checkpoints.watcher, "_stamp", lambda p: looks.append(p) or stamp(p))

    async def reload(changed: Path) -> object:
        reloaded.append(changed.read_bytes())
        return None

    task = asyncio.create_task(
        watch_checkpoint(path, lambda: "serving", reload, 0.02, quiet_s=0.0, refused=lambda: None)
    )
    try:
        await await_until(lambda: bool(looks), 10, "the watcher's first look at the file")
        path.unlink()
        path.mkdir()  # e.g. a volume remounted, or a botched deploy: stat works, reading fails
        seen = len(looks)
        await await_until(
            lambda: len(looks) >= seen + 3 or task.done(), 10, "the watcher looking at a directory"
        )
        path.rmdir()
        path.write_bytes(b"two")
        await await_until(lambda: bool(reloaded) or task.done(), 10, "the watcher reloading the new file")
        assert not task.done(), f"the watcher stopped: {task.exception()!r}"
        assert reloaded == [b"two"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.anyio
async def test_a_file_replaced_while_loading_is_never_served_under_the_wrong_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher's race: the file is swapped right after its bytes were read. The version is
    the hash of exactly the bytes loaded, so A's weights are served as A, never labelled B."""
    config, ckpts = _in_process_config(tmp_path)
    a = ckpts.versions["a.pt"]
    target = ckpts.root / "target.pt"
    target.write_bytes((ckpts.root / "a.pt").read_bytes())
    async with serving(config) as (client, _):
        read = service.checkpoints.loading.read_whole

        def read_then_swap(path: Path) -> Any:
            whole = read(path)
            if path.name == "target.pt":
                swap = ckpts.root / ".swap.tmp"
                swap.write_bytes((ckpts.root / "b.pt").read_bytes())
                os.replace(swap, path)  # A's bytes are in memory; B lands now
            return whole

        assert (
            await client.post("/models/m/reload", json={"checkpoint": "b.pt"}, headers=ADMIN)
        ).status_code == 200
        monkeypatch.setattr(service.checkpoints.loading, "read_whole", read_then_swap)
        answer = await client.post("/models/m/reload", json={"checkpoint": "target.pt"}, headers=ADMIN)
        body = await _predict(client, 4)
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == a == body["version"]
    assert matches(body["predictions"][0], ckpts.refs[a][4])


@pytest.mark.anyio
async def test_two_replicas_swap_together_under_load(tmp_path: Path) -> None:
    """Each replica serves the pinned version's own copy: no answer mixes or mislabels."""
    ckpts = _make_checkpoints(tmp_path)
    entry = model_entry(
        ARCH, "ckpt/a.pt", init_args=ARGS, devices=["cpu", "cpu"], batching={"max_batch_size": 2}
    )
    config = write_config(tmp_path, {"m": entry}, checkpoint_root="ckpt")
    async with serving(config) as (client, _):

        async def predict(i: int) -> tuple[int, httpx.Response]:
            await asyncio.sleep(0.004 * i)  # spread over the reloads
            return i, await client.post(
                "/predict?model=m&top_k=3", content=IMAGES[i % len(IMAGES)], headers=PNG
            )

        async def reload(n: int) -> httpx.Response:
            await asyncio.sleep(0.05 * n)  # pacing: the reloads spread over the requests
            target = "b.pt" if n % 2 == 0 else "a.pt"
            return await client.post("/models/m/reload", json={"checkpoint": target}, headers=ADMIN)

        results = await asyncio.gather(*(predict(i) for i in range(120)), *(reload(n) for n in range(6)))
        replicas = (await client.get("/models/m")).json()["replicas"]
    answers = [r for r in results if isinstance(r, tuple)]
    reloads = [r for r in results if not isinstance(r, tuple)]
    assert [r.status_code for r in reloads] == [200] * 6
    seen = set()
    for i, answer in answers:
        assert answer.status_code == 200, answer.text
        version = answer.json()["version"]
        seen.add(version)
        assert matches(answer.json()["predictions"][0], ckpts.refs[version][i % len(IMAGES)]), (i, version)
    assert len(seen) == 2
    assert all(r["batches"] > 0 for r in replicas), replicas


@pytest.mark.anyio
async def test_reloading_the_serving_content_is_a_no_op_that_keeps_the_rollback_target(
    tmp_path: Path,
) -> None:
    config, ckpts = _in_process_config(tmp_path)
    a, b = ckpts.versions["a.pt"], ckpts.versions["b.pt"]
    (ckpts.root / "b-copy.pt").write_bytes((ckpts.root / "b.pt").read_bytes())  # same content, new name
    async with serving(config) as (client, runtime):
        assert (await client.post("/models/m/reload", json={"checkpoint": "b.pt"}, headers=ADMIN)).json()[
            "changed"
        ]
        for name in ("b.pt", "b-copy.pt"):
            same = await client.post("/models/m/reload", json={"checkpoint": name}, headers=ADMIN)
            assert same.status_code == 200, same.text
            assert same.json() == {"model": "m", "previous_version": b, "version": b, "changed": False}
        described = (await client.get("/models/m")).json()
        assert (described["version"], described["previous_version"]) == (b, a)
        back = await client.post("/models/m/rollback", headers=ADMIN)
        assert back.json()["version"] == a  # the real rollback target survived
        unchanged = runtime.metrics.registry.get_sample_value(
            "model_serve_reloads_total", {"model": "m", "outcome": "unchanged"}
        )
    assert unchanged == 2
