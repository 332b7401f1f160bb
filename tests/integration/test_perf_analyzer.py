"""Triton's perf_analyzer completes against both v2 doors of the demo server, with real images
and with zero tensors, and the server-side statistics it prints are the server's own counts.

Skips where perf_analyzer cannot run (no x86_64 Linux, no ``libb64-0d``, pip unreachable):
``load_tests.perf_analyzer.locate`` says why.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from load_tests.perf_analyzer import SAMPLES, PerfAnalyzer, image_data, locate
from tests.support.serving import ServerProcess


@pytest.fixture(scope="module")
def perf_analyzer() -> PerfAnalyzer:
    found = locate()
    if isinstance(found, str):
        pytest.skip(found)
    return found


def _served(server: ServerProcess) -> int:
    """Requests the demo's digits model has answered, from its v2 statistics."""
    stats = httpx.get(f"{server.url}/v2/models/digits/stats", timeout=10).json()
    return int(stats["model_stats"][0]["inference_stats"]["success"]["count"])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("data", ["images", "zero"])
def test_perf_analyzer_measures_both_doors(
    perf_analyzer: PerfAnalyzer, demo_server: ServerProcess, protocol: str, data: str, tmp_path: Path
) -> None:
    url = demo_server.url.removeprefix("http://") if protocol == "http" else demo_server.grpc_address
    chosen = (
        str(image_data(sorted(SAMPLES.glob("digit_*.png")), tmp_path / "digits.json"))
        if data == "images"
        else data
    )
    before = _served(demo_server)
    measured = perf_analyzer.run("digits", url, protocol, chosen)
    assert measured.throughput > 0
    assert measured.server_requests > 0
    assert measured.server_compute_infer_us > 0
    # the server counted at least every request perf_analyzer's windows measured
    assert _served(demo_server) - before >= measured.server_requests
