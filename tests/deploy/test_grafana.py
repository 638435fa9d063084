"""The provisioned Grafana dashboard and datasource: structure, variables, and every metric
name in every query is one the worker documents (README) or a recording rule defines."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.promql import (
    PROMETHEUS_BUILTINS,
    metric_names,
    readme_metrics,
    recorded_names,
)

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD_FILE = GRAFANA / "dashboards" / "churn-stream.json"
DASHBOARD = json.loads(DASHBOARD_FILE.read_text())
PANELS = [panel for panel in DASHBOARD["panels"] if panel["type"] != "row"]
ROWS = [panel["title"] for panel in DASHBOARD["panels"] if panel["type"] == "row"]
VARIABLES = {variable["name"]: variable for variable in DASHBOARD["templating"]["list"]}
KNOWN = readme_metrics() | recorded_names() | PROMETHEUS_BUILTINS
_LABEL_VALUES = re.compile(r"^label_values\((?P<metric>.+),\s*(?P<label>\w+)\)$")


def _expressions() -> list[tuple[str, str]]:
    found = [(panel["title"], target["expr"]) for panel in PANELS for target in panel["targets"]]
    found += [(a["name"], a["expr"]) for a in DASHBOARD["annotations"]["list"] if "expr" in a]
    for variable in VARIABLES.values():
        if variable["type"] == "query":
            match = _LABEL_VALUES.match(variable["query"]["query"])
            assert match, variable["query"]
            found.append((f"${variable['name']}", match["metric"]))
    return found


def test_the_dashboard_is_valid_json_with_a_stable_uid():
    assert DASHBOARD["uid"] == "churn-stream"
    assert DASHBOARD["title"]
    assert len({panel["id"] for panel in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])


@pytest.mark.parametrize("panel", PANELS, ids=[panel["title"] for panel in PANELS])
def test_every_panel_has_a_datasource_and_queries(panel):
    assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert panel["targets"]
    for target in panel["targets"]:
        assert target["expr"].strip() and target["refId"]
        assert target["datasource"] == panel["datasource"]
    position = panel["gridPos"]
    assert position["x"] >= 0 and position["x"] + position["w"] <= 24 and position["h"] > 0


def test_panels_do_not_overlap():
    cells: set[tuple[int, int]] = set()
    for panel in DASHBOARD["panels"]:
        grid = panel["gridPos"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & area, panel["title"]
        cells |= area


@pytest.mark.parametrize(("where", "expr"), _expressions())
def test_every_metric_in_every_expression_exists(where, expr):
    names = metric_names(expr)
    assert names, f"{where}: no metric in {expr!r}"
    assert names <= KNOWN, f"{where}: unknown {names - KNOWN}"


def test_template_variables_select_window_dimension_and_segment():
    assert VARIABLES["datasource"]["type"] == "datasource"
    assert VARIABLES["datasource"]["query"] == "prometheus"
    windows = VARIABLES["window"]["query"].split(",")
    assert windows == [
        "day",
        "week",
        "month",
        "quarter",
        "year",
        "rolling_7d",
        "rolling_30d",
        "rolling_90d",
    ]
    assert "dimension" in VARIABLES["dimension"]["query"]["query"]
    assert '{dimension="$dimension"}' in VARIABLES["segment"]["query"]["query"]


def _uses(name: str) -> bool:
    return any(name in metric_names(expr) for _, expr in _expressions())


@pytest.mark.parametrize(
    "series",
    [
        "segment:churn_customer_churn_ratio:max",
        "segment:churn_customer_retention_ratio:max",
        "segment:churn_monthly_churn_ratio:max",
        "segment:churn_monthly_churn_ratio:upper_bound",
        "segment:churn_customers_start:max",
        "segment:churn_customers_end:max",
        "segment:churn_new_customers:max",
        "segment:churn_churned_customers:max",
        "segment:churn_reactivated_customers:max",
        "segment:churn_active_customers:max",
        "segment:churn_gross_mrr_churn_ratio:max",
        "segment:churn_net_revenue_retention_ratio:max",
        "segment:churn_mrr_start:max",
        "segment:churn_mrr_end:max",
        "segment:churn_new_mrr:max",
        "segment:churn_expansion_mrr:max",
        "segment:churn_contraction_mrr:max",
        "segment:churn_churned_mrr:max",
        "segment:churn_reactivation_mrr:max",
        "segment:churn_repeat_purchase_ratio:max",
        "segment:churn_spike_score:max",
        "segment:churn_rolling_7d_churn_ratio:avg_28d",
        "ALERTS",
        "job_type:churn_events:rate5m",
        "job_reason:churn_invalid_events:rate5m",
        "job:churn_event_time_lag_seconds:max",
        "job:churn_consumer_lag_messages:sum",
    ],
)
def test_the_dashboard_shows(series):
    assert _uses(series)


def test_rows_cover_the_issue():
    expected = ["Overview", "per window kind", "Customers", "Revenue", "Segment breakdown"]
    expected += ["Spikes", "Processor health"]
    for words in expected:
        assert any(words in title for title in ROWS), words


def test_alerts_are_annotations():
    (annotation,) = [a for a in DASHBOARD["annotations"]["list"] if a.get("expr")]
    assert "ALERTS" in annotation["expr"] and annotation["enable"] is True


def _provisioning(path: str) -> dict[str, Any]:
    return yaml.safe_load((GRAFANA / "provisioning" / path).read_text())


def test_the_datasource_points_at_the_compose_prometheus():
    (source,) = _provisioning("datasources/prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "9090:9090" in compose["services"]["prometheus"]["ports"]


def test_the_dashboard_provider_reads_the_mounted_folder():
    (provider,) = _provisioning("dashboards/churn-stream.yml")["providers"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts
