"""Writes k8s/monitoring/prometheusrule.yaml from monitoring/prometheus/alerts.yml.

alerts.yml is the one source of truth for the alerting rules; the Prometheus Operator's
PrometheusRule carries the same groups under ``spec``. Run after editing alerts.yml:
``python monitoring/prometheusrule.py`` (``--check`` exits 1 when the file is stale).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "monitoring" / "prometheus" / "alerts.yml"
RULE = ROOT / "k8s" / "monitoring" / "prometheusrule.yaml"
HEADER = """\
# GENERATED from monitoring/prometheus/alerts.yml by `python monitoring/prometheusrule.py`:
# edit alerts.yml, then rerun it (tests/deploy/test_alerts.py fails while they differ).
# Many installs (kube-prometheus-stack) only load rules carrying their release label
# (the Prometheus resource's ruleSelector): add it in k8s/monitoring/kustomization.yaml.
"""


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings, so generated expressions read like alerts.yml."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def prometheus_rule(alerts: dict[str, Any]) -> dict[str, Any]:
    """The PrometheusRule object holding exactly ``alerts``' groups."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "model-serve",
            "labels": {"app.kubernetes.io/name": "model-serve", "app.kubernetes.io/component": "alerts"},
        },
        "spec": {"groups": alerts["groups"]},
    }


def render(alerts_path: Path = ALERTS) -> str:
    """The generated file's text."""
    alerts = yaml.safe_load(alerts_path.read_text())
    body = yaml.dump(prometheus_rule(alerts), Dumper=_Dumper, sort_keys=False, width=100)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs, write nothing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if RULE.read_text() != text:
            print(
                f"{RULE.relative_to(ROOT)} is stale: run python monitoring/prometheusrule.py", file=sys.stderr
            )
            return 1
        return 0
    RULE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
