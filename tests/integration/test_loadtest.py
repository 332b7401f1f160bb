"""The Locust load test: its verdict logic (fast) and one short real run (slow)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from load_tests.run_locust import judge

REPO = Path(__file__).resolve().parents[2]
HEADER = ["Type", "Name", "Request Count", "Failure Count", "Median Response Time", "99%"]


def _stats(path: Path, rows: list[tuple[str, str, int, int, str]]) -> Path:
    """A locust ``*_stats.csv`` with just the columns the verdict reads."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for kind, name, count, failures, p99 in rows:
            writer.writerow([kind, name, count, failures, p99, p99])
    return path


def test_verdict_passes_a_clean_fast_run(tmp_path: Path) -> None:
    stats = _stats(
        tmp_path / "s.csv", [("POST", "/predict digits raw", 50, 0, "120"), ("", "Aggregated", 50, 0, "120")]
    )
    verdict = judge(stats, max_p99_ms=2000)
    assert verdict.ok, verdict.problems
    assert (verdict.requests, verdict.failures, verdict.p99_ms) == (50, 0, 120.0)
    assert verdict.line(2000).startswith("PASS")


def test_verdict_rejects_any_failure_and_names_the_request(tmp_path: Path) -> None:
    stats = _stats(
        tmp_path / "s.csv",
        [
            ("POST", "/predict digits raw", 50, 0, "120"),
            ("POST", "/models/digits/reload", 5, 1, "300"),
            ("", "Aggregated", 55, 1, "150"),
        ],
    )
    verdict = judge(stats, max_p99_ms=2000)
    assert not verdict.ok
    assert "/models/digits/reload (1)" in verdict.line(2000)
    assert verdict.line(2000).startswith("FAIL")


def test_verdict_rejects_a_slow_p99_and_an_empty_or_missing_run(tmp_path: Path) -> None:
    slow = _stats(tmp_path / "slow.csv", [("", "Aggregated", 10, 0, "2500")])
    assert "p99 2500 ms is above 2000 ms" in judge(slow, max_p99_ms=2000).problems
    empty = _stats(tmp_path / "empty.csv", [("", "Aggregated", 0, 0, "N/A")])
    assert judge(empty, max_p99_ms=2000).problems == ("no requests were made",)
    assert not judge(tmp_path / "missing.csv", max_p99_ms=2000).ok


@pytest.mark.slow
def test_short_locust_run_passes_with_reloads_and_both_models(tmp_path: Path) -> None:
    out = tmp_path / "locust"
    env = {**os.environ, "MODEL_SERVE_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        # the arguments of `make loadtest`: CI runs the documented load test itself
        [
            sys.executable,
            "load_tests/run_locust.py",
            "--users",
            "20",
            "--duration",
            "30",
            "--max-p99-ms",
            "2000",
            "--out",
            str(out),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "PASS:" in done.stdout
    with (out / "locust_stats.csv").open(newline="") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    assert all(int(row["Failure Count"]) == 0 for row in rows.values())
    reload_row = rows["/models/digits/reload"]
    assert int(reload_row["Request Count"]) >= 1
    for name in (
        "/predict digits raw",
        "/predict digits multipart",
        "/predict shapes raw",
        "/predict shapes multipart",
    ):
        assert int(rows[name]["Request Count"]) >= 1, name
    assert (out / "locust.html").is_file()
