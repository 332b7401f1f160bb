"""A real ``model-serve`` reloaded between checkpoint formats under load loses no request.

Every answer is checked against the in-process reference of the version it reports, so an
answer from half-loaded shards or of mixed versions would fail, not only a non-200 one.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from service.checkpoints.layout import checkpoint_version
from tests.support.formats import FORMATS
from tests.support.harness import ADMIN, model_entry, png, write_config
from tests.support.loadgen import PNG, Load, matches, reference_scores, wait_until
from tests.support.serving import ServerProcess
from tests.support.training import ARCH, ARGS

IMAGES = [png(v) for v in (0, 120, 255)] + [png(None, seed=5)]
CYCLE = ("dcp", "safetensors-index", "bin-folder", "ema", "averaged", "bfloat16")


@pytest.mark.slow
def test_reloads_between_formats_under_load_lose_no_request(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    root.mkdir()
    paths, refs = {}, {}
    for name in CYCLE:
        path, reference = FORMATS[name][0](root)
        paths[name] = path
        refs[checkpoint_version(root / path)] = reference_scores(reference, IMAGES)
    assert len(refs) == len(CYCLE), "every format must be a version of its own"
    batching = {"max_batch_size": 4}
    entry = model_entry(ARCH, f"ckpt/{paths['dcp']}", init_args=ARGS, cpu_replicas=1, batching=batching)
    config = write_config(tmp_path, {"m": entry}, checkpoint_root="ckpt")
    with ServerProcess(config, tmp_path / "server.log") as server:

        def send(client: httpx.Client, i: int) -> httpx.Response:
            image = IMAGES[i % len(IMAGES)]
            return client.post(f"{server.url}/predict?model=m&top_k=3", content=image, headers=PNG)

        with Load(send, threads=3, max_requests=20_000, max_s=60) as load:
            for name in (*CYCLE[1:], *CYCLE):
                answered = load.count() + 20
                wait_until(lambda at=answered: load.count() >= at, 20, "answers between reloads")
                body = {"checkpoint": paths[name]}
                answer = httpx.post(f"{server.url}/models/m/reload", json=body, headers=ADMIN, timeout=30)
                assert answer.status_code == 200, answer.text
                assert answer.json()["version"] == checkpoint_version(root / paths[name])
    failed = [outcome for outcome in load.outcomes if outcome.status != 200]
    assert not failed, f"{len(failed)} of {len(load.outcomes)} requests failed, e.g. {failed[:3]}"
    seen = set()
    for outcome in load.outcomes:
        version = outcome.body["version"]
        seen.add(version)
        assert matches(outcome.body["predictions"][0], refs[version][outcome.index % len(IMAGES)])
    assert seen == set(refs)
