"""The alerting rules: promtool accepts them, its unit tests cover every alert both ways, they
use only exported series, and the Operator's PrometheusRule carries exactly the same groups."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from monitoring.prometheusrule import RULE, render
from tests.deploy.test_k8s import _render
from tests.support.monitoring import ALERTS, ALERTS_TEST, exported_families, referenced_metrics, series_names

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: prometheus)")
DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")
RULE_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
GROUP_KEYS = {"name", "interval", "rules", "limit"}


def _groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(ALERTS.read_text())["groups"]
    return groups


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _groups() for rule in group["rules"]]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=ALERTS.parent, capture_output=True, text=True, timeout=60, check=False
    )


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = _promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    result = _promtool("test", "rules", ALERTS_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_tests_see_every_alert_fire_and_stay_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in _rules()}
    assert names - firing == set(), "alerts no unit test sees firing"
    assert names - quiet == set(), "alerts no unit test sees quiet"
    assert (firing | quiet) - names == set(), "unit tests of alerts that do not exist"


def test_every_alert_carries_severity_summary_and_description() -> None:
    names = [rule["alert"] for rule in _rules()]
    assert len(names) == len(set(names))
    assert {"ModelServeTargetDown", "ModelServeNotReady", "ModelServeHighErrorRatio"} <= set(names)
    assert {"ModelServeHighLatency", "ModelServeQueueNearlyFull", "ModelServeReloadFailed"} <= set(names)
    for rule in _rules():
        assert set(rule) <= RULE_KEYS, rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]
        assert DURATION.fullmatch(rule.get("for", "0s")), rule["alert"]


def test_rules_query_only_series_the_server_exports() -> None:
    exported = series_names(exported_families())
    for rule in _rules():
        used = referenced_metrics(rule["expr"])
        assert used - exported == set(), rule["alert"]
    assert "model_serve_queue_capacity" in exported


def test_prometheusrule_is_generated_from_alerts_yml() -> None:
    assert RULE.read_text() == render(), "stale: run python monitoring/prometheusrule.py"
    rule = yaml.safe_load(RULE.read_text())
    assert rule["spec"]["groups"] == _groups()


def test_prometheusrule_renders_as_a_valid_monitoring_coreos_com_v1_object() -> None:
    (rule,) = _render("monitoring")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", rule["metadata"]["name"])
    assert set(rule["spec"]) == {"groups"}
    groups = rule["spec"]["groups"]
    assert len({group["name"] for group in groups}) == len(groups)
    for group in groups:
        assert set(group) <= GROUP_KEYS and group["rules"], group["name"]
        for item in group["rules"]:
            assert set(item) <= RULE_KEYS
            assert isinstance(item["alert"], str) and isinstance(item["expr"], str)
            for field in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in item.get(field, {}).values()), item["alert"]
    assert groups == _groups()
