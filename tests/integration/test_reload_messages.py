"""A refused reload's answer names the file as the client named it (under ``checkpoint_root``)
and the architecture as configured (``module:callable``), never the server's own paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.harness import ADMIN, model_entry, save_random_weights, serving, write_config

ARCH = "tests.support.archs:slow_classifier"
ARGS = {"delay_s": 0.0, "in_channels": 1, "num_classes": 3}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_refused_reload_names_the_file_under_the_root_and_the_configured_architecture(
    tmp_path: Path,
) -> None:
    root = tmp_path / "ckpt"
    save_random_weights(ARCH, ARGS, root / "a.pt")
    save_random_weights(ARCH, {**ARGS, "num_classes": 5}, root / "sub" / "five.pt")
    (root / "sub" / "junk.pt").write_bytes(os.urandom(4096))
    config = write_config(
        tmp_path, {"m": model_entry(ARCH, "ckpt/a.pt", init_args=ARGS)}, checkpoint_root="ckpt"
    )
    async with serving(config) as (client, _):
        wrong = await client.post("/models/m/reload", json={"checkpoint": "sub/five.pt"}, headers=ADMIN)
        junk = await client.post("/models/m/reload", json={"checkpoint": "sub/junk.pt"}, headers=ADMIN)
    assert wrong.status_code == 422, wrong.text
    message = wrong.json()["error"]["message"]
    assert message.startswith(f"sub/five.pt does not load into {ARCH}:"), message
    assert "head.weight" in message
    assert junk.status_code == 422, junk.text
    assert "sub/junk.pt" in junk.json()["error"]["message"]
    for answer in (wrong, junk):
        assert str(tmp_path) not in answer.text
