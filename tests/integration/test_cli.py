"""The console script as a user runs it: inspect's exit codes, serve's start-up errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from models.demo import CHECKPOINT_DIR, DIGITS
from tests.support.harness import model_entry, save_random_weights, write_config
from tests.support.serving import REPO


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_inspect_a_dataparallel_checkpoint(tmp_path: Path) -> None:
    model = save_random_weights("models.lenet:lenet", {"num_classes": 10}, tmp_path / "plain.pt")
    torch.save(nn.DataParallel(model).state_dict(), tmp_path / "dp.pt")
    result = _cli(
        "inspect",
        str(tmp_path / "dp.pt"),
        "--architecture",
        "models.lenet:lenet",
        "--init-args",
        '{"num_classes": 10}',
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "module." in result.stdout
    wrong = _cli(
        "inspect",
        str(tmp_path / "dp.pt"),
        "--architecture",
        "models.lenet:lenet",
        "--init-args",
        '{"num_classes": 7}',
    )
    assert wrong.returncode == 1
    assert "shape" in wrong.stdout.lower()


def test_inspect_the_shipped_demo_checkpoint() -> None:
    result = _cli(
        "inspect", str(CHECKPOINT_DIR / DIGITS.checkpoint_file), "--architecture", DIGITS.architecture
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "safetensors" in result.stdout


def test_inspect_refuses_bad_arguments_and_files(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"definitely not a checkpoint")
    assert _cli("inspect", str(tmp_path / "junk.pt")).returncode == 2
    bad_json = _cli("inspect", str(tmp_path / "junk.pt"), "--init-args", "{num_classes")
    assert bad_json.returncode == 2 and "--init-args" in bad_json.stderr


def test_serve_with_an_unknown_key_exits_naming_it(tmp_path: Path) -> None:
    save_random_weights("tests.support.archs:slow_classifier", {"delay_s": 0.0}, tmp_path / "m.pt")
    entry = model_entry("tests.support.archs:slow_classifier", "m.pt", batchin={"max_batch_size": 2})
    result = _cli("serve", "--config", str(write_config(tmp_path, {"m": entry})), "--port", "1")
    assert result.returncode == 2
    assert "models.m.batchin" in result.stderr


def test_serve_exits_when_a_model_cannot_load(tmp_path: Path) -> None:
    (tmp_path / "m.pt").write_bytes(b"truncated")
    entry = model_entry("tests.support.archs:slow_classifier", "m.pt")
    from tests.support.serving import free_port

    config = write_config(tmp_path, {"m": entry})
    result = _cli("serve", "--config", str(config), "--port", str(free_port()))
    assert result.returncode == 1
    assert "m.pt" in result.stderr
