"""The Grafana dashboard imports cleanly (datasource and model variables, no overlapping panels)
and every panel's query parses and uses only series the server exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.monitoring import (
    DATASOURCE,
    dashboard,
    exported_families,
    panel_queries,
    panels,
    referenced_metrics,
    series_names,
    substitute,
)

PROMTOOL = shutil.which("promtool")
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
OFFLINE_VARIABLES = {**GRAFANA_VARIABLES, "model": "m", "instance": ".*"}


def _variables() -> dict[str, dict[str, object]]:
    return {variable["name"]: variable for variable in dashboard()["templating"]["list"]}


def test_dashboard_is_importable() -> None:
    board = dashboard()
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["uid"] == "model-serve" and board["title"]
    assert "id" not in board or board["id"] is None, "an id ties the file to one Grafana"
    nested = [inner for row in board["panels"] for inner in row.get("panels", [])]
    ids = [panel["id"] for panel in board["panels"] + nested]
    assert len(ids) == len(set(ids))


def test_datasource_and_model_variables() -> None:
    variables = _variables()
    datasource = variables["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    model = variables["model"]
    assert model["type"] == "query"
    assert model["datasource"] == DATASOURCE
    assert model["definition"] == "label_values(model_serve_requests_total, model)"
    assert model["query"] == {"query": model["definition"], "refId": "model-values"}
    for variable in variables.values():
        if variable.get("includeAll"):
            assert variable["allValue"] == ".*", "All must match every value in a =~ matcher"


def test_every_panel_and_query_uses_the_datasource_variable() -> None:
    for panel in panels(dashboard()):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_panels_do_not_overlap_and_fit_the_grid() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_queries_use_only_defined_variables_and_exported_series() -> None:
    exported = series_names(exported_families())
    known = set(_variables()) | set(GRAFANA_VARIABLES)
    for title, expression in panel_queries(dashboard()):
        assert set(re.findall(r"\$\{?(\w+)", expression)) <= known, title
        assert referenced_metrics(expression) - exported == set(), title
        assert "$" not in substitute(expression, OFFLINE_VARIABLES), title


def test_dashboard_covers_the_operator_questions() -> None:
    queries = [expression for _, expression in panel_queries(dashboard())]
    text = "\n".join(queries)
    for family in (
        "model_serve_requests_total",
        "model_serve_batch_size_bucket",
        "model_serve_batch_size_sum",
        "model_serve_queue_depth",
        "model_serve_queue_capacity",
        "model_serve_queue_wait_seconds_bucket",
        "model_serve_device_memory_bytes",
        "model_serve_reloads_total",
        "model_serve_ready",
        "model_serve_model_info",
    ):
        assert family in text, family
    latency = [q for q in queries if "model_serve_request_duration_seconds_bucket" in q]
    quantiles = {quantile for q in latency for quantile in re.findall(r"histogram_quantile\(([\d.]+)", q)}
    assert quantiles == {"0.5", "0.9", "0.99"}
    inference = [q for q in queries if "model_serve_inference_duration_seconds_bucket" in q]
    assert inference and all("by (device, le)" in q for q in inference)
    assert any('code=~"5.."' in q for q in queries), "an error ratio panel"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: prometheus)")
def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule: a syntax error fails here, offline."""
    assert PROMTOOL is not None
    rules = [
        {"record": f"dashboard:query_{index}", "expr": substitute(expression, OFFLINE_VARIABLES)}
        for index, (_, expression) in enumerate(panel_queries(dashboard()))
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
