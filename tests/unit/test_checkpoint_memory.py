"""load_tests/checkpoint_memory.py works end to end (at a small size; the >= 1 GB figures in
docs/checkpoints.md come from running it by hand)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.serving import REPO


@pytest.mark.slow
def test_the_memory_script_measures_each_format_and_cleans_up(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)}
    script = "load_tests/checkpoint_memory.py"
    command = [sys.executable, script, "--size-mb", "16", "--formats", "pt,dcp,sharded-bin"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [row["loaded_as"] for row in rows] == ["torch", "dcp", "sharded-torch"]
    for row in rows:
        assert row["model_mib"] == 16
        assert row["peak_rss_mib"] >= row["rss_before_load_mib"] > row["model_mib"]
    assert rows[1]["on_disk_mib"] >= 3 * 16  # the optimizer entries are there, and not read
    assert not list(tmp_path.iterdir()), "the scratch folder is left behind"
