"""A real ``prometheus`` server for the tests: free loopback port, 1 s scrapes and rule
evaluations, a tmp data folder, stopped by its PID."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.serving import free_port

JOB = "model-serve"  # the job name the shipped alerting rules select


class PrometheusProcess:
    """``prometheus`` scraping ``target`` as job ``model-serve``, storing in ``folder``."""

    def __init__(self, folder: Path, target: str, binary: str, rule_files: Sequence[Path] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = folder / "prometheus.log"
        self._log = self.log_path.open("wb")
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

    def api(self, path: str, **params: str) -> dict[str, Any] | None:
        """The answer of ``/api/v1/<path>`` (status and data), or None while Prometheus is not up."""
        try:
            answer = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=2)
        except httpx.TransportError:
            return None
        if answer.status_code == 503:  # still starting
            return None
        body: dict[str, Any] = answer.json()
        return body

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector of ``expression``, or [] while Prometheus is not up yet."""
        body = self.api("query", query=expression)
        if body is None or body["status"] != "success":
            return []
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(self, expression: str, timeout_s: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_running()
            result = self.query(expression)
            if result:
                return result
            time.sleep(0.2)
        raise AssertionError(f"no result for {expression!r} within {timeout_s} s:\n{self.log()[-3000:]}")

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.log()}")

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
