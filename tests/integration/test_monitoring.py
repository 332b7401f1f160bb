"""The shipped alerting rules and dashboard against a real Prometheus scraping a real model-serve:
alerts fire when their condition is made true, and every dashboard query returns data."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from load_tests import server_process
from tests.support.harness import ADMIN, model_entry, png, save_random_weights, write_config
from tests.support.loadgen import PNG
from tests.support.monitoring import (
    ALERTS,
    GPU_FAMILIES,
    dashboard,
    panel_queries,
    referenced_metrics,
    substitute,
)
from tests.support.prometheus import PrometheusProcess
from tests.support.serving import ServerProcess

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="the prometheus binary is not installed")
ARCH = "tests.support.archs:failing_on_bright"  # a white image fails its batch with 500
MODEL = "fragile"
GOOD, BAD = png(10), png(255)
TIMEOUT_S = 30.0


@dataclass
class Stack:
    server: server_process.ServerProcess  # what ``with ServerProcess(...)`` gives
    prometheus: PrometheusProcess
    folder: Path


def _rules_without_for(folder: Path) -> Path:
    """alerts.yml with every ``for`` dropped, so a true condition fires at the next evaluation."""
    alerts = yaml.safe_load(ALERTS.read_text())
    for group in alerts["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    path = folder / "alerts.yml"
    path.write_text(yaml.safe_dump(alerts))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    assert PROMETHEUS is not None
    folder = tmp_path_factory.mktemp("monitoring")
    save_random_weights(ARCH, {}, folder / "f.pt")
    entry = model_entry(ARCH, "f.pt", batching={"max_batch_size": 1})
    config = write_config(folder, {MODEL: entry})
    with ServerProcess(config, folder / "server.log") as server:
        data = folder / "prometheus"
        data.mkdir()
        prometheus = PrometheusProcess(
            data, f"127.0.0.1:{server.port}", PROMETHEUS, [_rules_without_for(folder)]
        )
        try:
            prometheus.wait_for(f'model_serve_reloads_total{{model="{MODEL}", outcome="failure"}} == 0')
            yield Stack(server, prometheus, folder)
        finally:
            prometheus.stop()


def _predict(stack: Stack, image: bytes) -> int:
    answer = httpx.post(f"{stack.server.url}/predict", content=image, headers=PNG, timeout=10)
    return answer.status_code


def _alerts(stack: Stack, name: str) -> list[dict[str, Any]]:
    body = stack.prometheus.api("alerts")
    if body is None:
        return []
    return [alert for alert in body["data"]["alerts"] if alert["labels"]["alertname"] == name]


def _wait_firing(stack: Stack, name: str, poke: Any = None) -> dict[str, Any]:
    """Polls Prometheus's /api/v1/alerts until ``name`` fires, calling ``poke`` between polls."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        stack.prometheus.check_running()
        if poke is not None:
            poke()
        firing = [alert for alert in _alerts(stack, name) if alert["state"] == "firing"]
        if firing:
            (alert,) = firing
            return alert
        time.sleep(0.2)
    raise AssertionError(f"{name} did not fire within {TIMEOUT_S} s:\n{stack.prometheus.log()[-3000:]}")


def test_error_ratio_alert_fires_when_half_the_requests_fail(stack: Stack) -> None:
    def half_failing() -> None:
        assert _predict(stack, BAD) == 500
        assert _predict(stack, GOOD) == 200

    alert = _wait_firing(stack, "ModelServeHighErrorRatio", half_failing)
    assert alert["labels"]["model"] == MODEL
    assert alert["labels"]["job"] == "model-serve"
    assert alert["labels"]["severity"] == "critical"
    assert 0.05 < float(alert["value"]) <= 1
    assert f"model {MODEL}:" in alert["annotations"]["summary"]


def test_failed_reload_alert_fires(stack: Stack) -> None:
    (stack.folder / "broken.pt").write_bytes(b"not a checkpoint")
    answer = httpx.post(
        f"{stack.server.url}/models/{MODEL}/reload",
        json={"checkpoint": "broken.pt"},
        headers=ADMIN,
        timeout=30,
    )
    assert answer.status_code >= 400, answer.text
    alert = _wait_firing(stack, "ModelServeReloadFailed")
    assert alert["labels"]["model"] == MODEL
    assert alert["labels"]["instance"] == f"127.0.0.1:{stack.server.port}"


def test_healthy_conditions_do_not_alert_and_every_rule_evaluates(stack: Stack) -> None:
    stack.prometheus.wait_for('model_serve_queue_capacity{model="fragile"} == 1024')
    stack.prometheus.wait_for("model_serve_ready == 1")
    body = stack.prometheus.api("rules")
    assert body is not None
    rules = [rule for group in body["data"]["groups"] for rule in group["rules"]]
    assert len(rules) == sum(len(g["rules"]) for g in yaml.safe_load(ALERTS.read_text())["groups"])
    for rule in rules:
        assert rule["health"] in {"ok", "unknown"}, (rule["name"], rule.get("lastError"))
    for name in ("ModelServeTargetDown", "ModelServeTargetMissing", "ModelServeNotReady"):
        assert _alerts(stack, name) == [], name
    assert _alerts(stack, "ModelServeQueueNearlyFull") == []


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    assert _predict(stack, GOOD) == 200
    assert _predict(stack, BAD) == 500
    assert _predict(stack, b"not an image") == 400  # a rejected request, by reason
    variables = {
        "model": MODEL,
        "instance": f"127.0.0.1:{stack.server.port}",
        "__rate_interval": "1m",
        "__interval": "5s",
        "__range": "5m",
    }
    for title, expression in panel_queries(dashboard()):
        query = substitute(expression, variables)
        if referenced_metrics(query) <= GPU_FAMILIES:
            body = stack.prometheus.api("query", query=query)
            assert body is not None and body["status"] == "success", (title, body)
        else:
            stack.prometheus.wait_for(query, TIMEOUT_S)
