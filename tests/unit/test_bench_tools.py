"""The benchmark finds wrk on PATH and, without it, stops before measuring anything."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from load_tests.server_process import REPO
from load_tests.wrk import find_wrk


def test_wrk_is_looked_for_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "wrk"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_wrk() == str(fake)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert find_wrk() is None


def test_benchmark_without_wrk_exits_2_before_measuring(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path), "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    finished = subprocess.run(
        [sys.executable, "load_tests/benchmark.py", "--out", str(tmp_path / "reports")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 2, finished.stderr
    assert "wrk is not on PATH" in finished.stderr
    assert "Traceback" not in finished.stderr
    assert not (tmp_path / "reports").exists()  # nothing was measured or reported
    assert time.monotonic() - started < 60
