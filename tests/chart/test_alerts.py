"""The alert rules and the Grafana dashboard: promtool accepts the rules and their unit tests
pass, every metric they query is one the tether binary registers, every alert has a runbook."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from conftest import CHART, HERE, ROOT, run_tether

ALERTS = CHART / "files" / "alerts.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"
GUIDE = ROOT / "docs" / "helm.md"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Grafana's built-in variables, replaced by what they stand for so the query parses.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query in the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((panel["title"], expr))
    return queries


def selectors(node: Any) -> Iterator[str]:
    """Every metric name a PromQL expression selects, walking the parsed syntax tree."""
    if isinstance(node, promql_parser.VectorSelector):
        names = [node.name] if node.name else []
        names += [m.value for m in node.matchers.matchers if m.name == "__name__"]
        yield from names
    elif isinstance(node, promql_parser.MatrixSelector):
        yield from selectors(node.vector_selector)
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from selectors(node.lhs)
        yield from selectors(node.rhs)
    elif isinstance(node, promql_parser.AggregateExpr):
        yield from selectors(node.expr)
        if node.param is not None:
            yield from selectors(node.param)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from selectors(arg)
    elif isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)):
        yield from selectors(node.expr)
    elif not isinstance(node, (promql_parser.NumberLiteral, promql_parser.StringLiteral)):
        raise TypeError(f"unexpected PromQL node {type(node).__name__}")


def metric_names(expr: str) -> set[str]:
    return set(selectors(promql_parser.parse(expr)))


def unknown_metrics(expr: str, registered: set[str]) -> set[str]:
    """Names in `expr` the binary does not export (a histogram exports name_bucket/_sum/_count)."""

    def exported(name: str) -> bool:
        return name in registered or any(
            name.endswith(suffix) and name.removesuffix(suffix) in registered for suffix in HISTOGRAM_SUFFIXES
        )

    return {name for name in metric_names(expr) if not exported(name)}


@pytest.fixture(scope="module")
def registered(tether_bin: Path) -> set[str]:
    names = {line.strip() for line in run_tether(tether_bin, "metrics-names").splitlines() if line.strip()}
    assert names, "`tether metrics-names` printed no metric names"
    return names


# --- promtool --------------------------------------------------------------------------------


def test_promtool_accepts_the_rules_file(promtool: str) -> None:
    done = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def test_each_alert_fires_on_its_symptom_and_not_on_the_healthy_case(promtool: str) -> None:
    # tests/chart/alerts_test.yaml: input series and the alerts expected at given times.
    done = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yaml"],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    tested = {
        t["alertname"]
        for test in yaml.safe_load((HERE / "alerts_test.yaml").read_text())["tests"]
        for t in test["alert_rule_test"]
    }
    assert tested == {rule["alert"] for rule in alert_rules()}, "every alert needs a promtool unit test"


# --- Metric names ----------------------------------------------------------------------------


def test_metric_names_are_found_in_every_part_of_an_expression() -> None:
    expr = (
        'sum by (a) (rate(one_total{x="y"}[5m])) / on (a) group_left max(two) '
        "unless histogram_quantile(0.9, rate(three_bucket[5m])) and -(four offset 1h) "
        'or max_over_time(five[1h:5m]) or topk(1, six) or {__name__="seven"}'
    )
    assert metric_names(expr) == {"one_total", "two", "three_bucket", "four", "five", "six", "seven"}


def test_an_unregistered_metric_is_reported() -> None:
    registered = {"tether_requests_total", "tether_duration_seconds"}
    expr = "rate(tether_requests_total[5m]) + rate(tether_duration_seconds_bucket[5m]) + tether_typo_total"
    assert unknown_metrics(expr, registered) == {"tether_typo_total"}


def test_alert_expressions_only_use_metrics_the_binary_registers(registered: set[str]) -> None:
    unknown = {rule["alert"]: unknown_metrics(rule["expr"], registered) for rule in alert_rules()}
    assert {alert: names for alert, names in unknown.items() if names} == {}, (
        f"`tether metrics-names` does not list these (registered: {sorted(registered)})"
    )


def test_dashboard_queries_only_use_metrics_the_binary_registers(registered: set[str]) -> None:
    unknown = {title: unknown_metrics(expr, registered) for title, expr in dashboard_queries()}
    assert {title: names for title, names in unknown.items() if names} == {}


def test_every_registered_metric_is_on_the_dashboard(registered: set[str]) -> None:
    shown: set[str] = set()
    for _, expr in dashboard_queries():
        shown |= metric_names(expr)
    shown |= {name.removesuffix(suffix) for name in shown for suffix in HISTOGRAM_SUFFIXES if name.endswith(suffix)}
    assert registered - shown == set(), "metrics the dashboard does not show"


# --- Alert contents and runbooks -------------------------------------------------------------


def test_every_alert_has_a_severity_summary_description_and_runbook() -> None:
    guide = GUIDE.read_text()
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert f"Runbook: {name} in the Tether Helm guide." in rule["annotations"]["description"], name
        assert re.search(rf"^#### {name}$", guide, re.MULTILINE), f"docs/helm.md has no runbook section for {name}"


def test_the_alerts_named_by_the_issue_exist() -> None:
    exprs = {rule["alert"]: rule for rule in alert_rules()}
    errors = exprs["TetherReconcileErrorsHigh"]
    assert metric_names(errors["expr"]) == {
        "controller_runtime_reconcile_errors_total",
        "controller_runtime_reconcile_total",
    }
    assert "> 0.05" in errors["expr"] and errors["for"] == "10m"
    assert exprs["TetherDriftNotCorrected"]["for"] == "1h"
    assert exprs["TetherPlatformRateLimited"]["for"] == "15m"
    for alert in ("TetherMigrationFailed", "TetherMigrationBlocked", "TetherCredentialsRejected"):
        assert alert in exprs


def test_the_dashboard_is_a_grafana_dashboard_with_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "Tether" and dashboard["schemaVersion"] >= 36
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]


def test_the_dashboards_panels_fit_the_grid_without_overlapping() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]
