"""docs/metrics.md documents exactly the families the server exports, with their types and
labels, and its example queries parse."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.monitoring import DOCS, exported_families, referenced_metrics, series_names

PROMTOOL = shutil.which("promtool")
_ROW = re.compile(r"^\| `(model_serve_\w+)` \| (\w+) \|([\w, ]*)\| .+ \|$", re.MULTILINE)


def _example_queries() -> list[str]:
    """Each expression of the ```promql blocks: consecutive lines between comments."""
    queries: list[str] = []
    for block in re.findall(r"```promql\n(.*?)```", DOCS.read_text(), re.DOTALL):
        current: list[str] = []
        for line in [*block.splitlines(), "#"]:
            if line.startswith("#") or not line.strip():
                if current:
                    queries.append(" ".join(current))
                current = []
            elif line.startswith("  ") and current:
                current.append(line.strip())
            else:
                if current:
                    queries.append(" ".join(current))
                current = [line]
    return queries


def test_reference_table_matches_the_exported_families() -> None:
    documented = {
        name: (kind, frozenset(label.strip() for label in labels.split(",") if label.strip()))
        for name, kind, labels in _ROW.findall(DOCS.read_text())
    }
    exported = {name: (family.kind, family.labels) for name, family in exported_families().items()}
    assert documented == exported


def test_examples_use_exported_series() -> None:
    queries = _example_queries()
    assert len(queries) >= 8
    exported = series_names(exported_families())
    for query in queries:
        assert referenced_metrics(query), query
        assert referenced_metrics(query) <= exported, query


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: prometheus)")
def test_examples_parse_as_promql(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    rules = [{"record": f"docs:example_{i}", "expr": q} for i, q in enumerate(_example_queries())]
    path = tmp_path / "examples.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "docs", "rules": rules}]}))
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
