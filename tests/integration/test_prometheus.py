"""A real Prometheus scrapes a real model-serve on loopback and can query its series."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.harness import model_entry, png, save_random_weights, write_config
from tests.integration.loadgen import PNG, file_version
from tests.serving import ServerProcess, free_port

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="the prometheus binary is not installed")
ARCH = "tests.archs:slow_classifier"


class PrometheusProcess:
    """``prometheus`` on a free loopback port, storing in ``folder``; stopped by its PID."""

    def __init__(self, folder: Path, target: str, binary: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [{"job_name": "model-serve", "static_configs": [{"targets": [target]}]}],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self._log = (folder / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            cwd=folder,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.log_path = folder / "prometheus.log"

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector of ``expression``, or [] while Prometheus is not up yet."""
        try:
            answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expression}, timeout=2)
        except httpx.TransportError:
            return []
        if answer.status_code != 200:
            return []
        result: list[dict[str, Any]] = answer.json()["data"]["result"]
        return result

    def wait_for(self, expression: str, timeout_s: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.log()}")
            result = self.query(expression)
            if result:
                return result
            time.sleep(0.2)
        raise AssertionError(f"no result for {expression!r} within {timeout_s} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


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
