"""What the monitoring files refer to, and what the server exports, for the tests to compare.

The exported families come from a real ``service.metrics.Metrics`` with every kind of child
touched once (and CUDA faked, so the per-GPU families show up on a CPU machine too).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from service.ops.metrics import PREFIX, Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "monitoring" / "grafana" / "model-serve.json"
ALERTS = ROOT / "monitoring" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "monitoring" / "prometheus" / "alerts_test.yml"
DOCS = ROOT / "docs" / "metrics.md"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Families that exist only where CUDA does: a CPU server exports none of them.
GPU_FAMILIES = {
    f"{PREFIX}device_memory_bytes",
    f"{PREFIX}device_memory_reserved_bytes",
    f"{PREFIX}device_utilization_ratio",
}
_METRIC = re.compile(rf"\b{PREFIX}[a-z_]+\b")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class Family:
    kind: str  # counter | gauge | histogram
    labels: frozenset[str]


def exported_families() -> dict[str, Family]:
    """Every ``model_serve_`` family by its exposed name (counters with ``_total``)."""
    metrics = Metrics()
    model = metrics.for_model("m")
    model.answered(200, 0.01)
    model.rejected("queue_full")
    model.observe_batch("cpu", 2, 0.001, 0.01)
    model.decode_duration.observe(0.001)
    model.images_per_request.observe(1)
    model.track_queue(lambda: 0)
    model.set_queue_capacity(8)
    model.set_batch_cap(8)
    metrics.set_model_info("m", "0123456789ab", "a.b:c")
    metrics.load_duration.labels("m").set(1)
    families: dict[str, Family] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: True)
        patch.setattr(torch.cuda, "device_count", lambda: 1)
        patch.setattr(torch.cuda, "memory_allocated", lambda index: 0)
        patch.setattr(torch.cuda, "memory_reserved", lambda index: 0)
        patch.setattr(torch.cuda, "utilization", lambda index: 50)
        collected = list(metrics.registry.collect())
    for family in collected:
        if not family.name.startswith(PREFIX):
            continue
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = {key for sample in family.samples for key in sample.labels if key != "le"}
        families[name] = Family(family.type, frozenset(labels))
    return families


def series_names(families: dict[str, Family]) -> set[str]:
    """Every series name a query may use: histograms with their suffixes."""
    names = set(families)
    for name, family in families.items():
        if family.kind == "histogram":
            names.update(name + suffix for suffix in _HISTOGRAM_SUFFIXES)
    return names


def referenced_metrics(expression: str) -> set[str]:
    return set(_METRIC.findall(expression))


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """The dashboard's panels, rows left out (and collapsed rows' panels brought in)."""
    found: list[dict[str, Any]] = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    return [(panel["title"], target["expr"]) for panel in panels(board) for target in panel["targets"]]


def substitute(expression: str, variables: dict[str, str]) -> str:
    """``expression`` with ``$name`` and ``${name}`` replaced the way Grafana does."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables[name] if name in variables else match.group(0)

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expression)
