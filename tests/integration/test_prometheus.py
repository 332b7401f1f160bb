"""A real Prometheus scrapes a real model-serve on loopback and can query its series."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.harness import model_entry, png, save_random_weights, write_config
from tests.support.loadgen import PNG, file_version
from tests.support.prometheus import PrometheusProcess
from tests.support.serving import ServerProcess

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="the prometheus binary is not installed")
ARCH = "tests.support.archs:slow_classifier"


@pytest.fixture
def model_server(tmp_path: Path) -> Iterator[ServerProcess]:
    save_random_weights(ARCH, {"delay_s": 0.0}, tmp_path / "a.pt")
    config = write_config(tmp_path, {"digits": model_entry(ARCH, "a.pt", init_args={"delay_s": 0.0})})
    with ServerProcess(config, tmp_path / "server.log") as server:
        yield server


def test_prometheus_scrapes_and_queries_model_serve(tmp_path: Path, model_server: ServerProcess) -> None:
    assert PROMETHEUS is not None
    for value in range(3):
        answer = httpx.post(f"{model_server.url}/predict", content=png(value), headers=PNG)
        assert answer.status_code == 200, answer.text
    folder = tmp_path / "prometheus"
    folder.mkdir()
    prometheus = PrometheusProcess(folder, f"127.0.0.1:{model_server.port}", PROMETHEUS)
    try:
        series = prometheus.wait_for("model_serve_requests_total")
        labels = series[0]["metric"]
        assert labels["model"] == "digits"
        assert labels["code"] == "200"
        assert labels["job"] == "model-serve"
        assert float(series[0]["value"][1]) >= 3
        up = prometheus.wait_for('up{job="model-serve"} == 1')
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{model_server.port}"
        info = prometheus.wait_for("model_serve_model_info")
        assert info[0]["metric"]["version"] == file_version(tmp_path / "a.pt")
        buckets = prometheus.wait_for(
            'model_serve_request_duration_seconds_bucket{model="digits", le="+Inf"}'
        )
        assert float(buckets[0]["value"][1]) >= 3
    finally:
        prometheus.stop()
