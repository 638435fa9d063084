"""Prometheus and Alertmanager configuration: promtool and amtool checks, the rules' unit
tests, coverage of every rule by a unit test, metric names, and a real scrape linted.

promtool/amtool come from the Debian packages `prometheus` and `prometheus-alertmanager`
(scripts/install-system-deps.sh, run by `make setup`): these tests fail without them.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from stream.local_pipeline import LocalPipeline
from stream.observability import (
    HealthMetrics,
    Metrics,
    TableSizes,
    WindowCollector,
    register_c_heap,
    register_rocksdb_memory,
)
from stream.simulator import SimulationConfig, generate_events
from stream.spikes import SpikeDetector
from tests.deploy.promql import (
    DEPLOY,
    PENDING_WORKER_METRICS,
    PROMETHEUS_BUILTINS,
    RULE_FILES,
    alert_names,
    metric_names,
    readme_metrics,
    recorded_names,
    rule_groups,
    rules,
)

PROMETHEUS_DIR = DEPLOY / "prometheus"
TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"

__all__ = ["RULE_FILES"]


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} missing: run scripts/install-system-deps.sh (Debian packages)"
    return path


def _run(*argv: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in argv],
        input=None if stdin is None else stdin.decode(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


# --------------------------------------------------------------------------- promtool


def test_rule_files_exist():
    assert [path.name for path in RULE_FILES] == ["churn-processor.yml", "churn-segments.yml"]
    assert TEST_FILES


def test_promtool_check_config():
    output = _ok(_run(_tool("promtool"), "check", "config", PROMETHEUS_DIR / "prometheus.yml"))
    assert "2 rule files found" in output


def test_promtool_check_rules():
    output = _ok(_run(_tool("promtool"), "check", "rules", *RULE_FILES))
    assert output.count("SUCCESS") == len(RULE_FILES)


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda path: path.name)
def test_promtool_test_rules(test_file):
    output = _ok(_run(_tool("promtool"), "test", "rules", test_file))
    assert "SUCCESS" in output and "FAILED" not in output


def test_every_rule_has_a_unit_test():
    tested_alerts: set[str] = set()
    tested_exprs: set[str] = set()
    for path in TEST_FILES:
        spec = yaml.safe_load(path.read_text())
        for case in spec["tests"]:
            tested_alerts |= {check["alertname"] for check in case.get("alert_rule_test", [])}
            for check in case.get("promql_expr_test", []):
                tested_exprs |= metric_names(check["expr"])
    assert alert_names() - tested_alerts == set()
    assert recorded_names() - tested_exprs == set()


def test_every_alert_fires_in_some_unit_test():
    firing: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    firing.add(check["alertname"])
    assert firing == alert_names()


def test_alerts_have_a_severity_and_a_summary():
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_rules_read_only_documented_metrics_or_recorded_series():
    known = readme_metrics() | recorded_names() | PROMETHEUS_BUILTINS | PENDING_WORKER_METRICS
    for rule in rules():
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('record') or rule.get('alert')}: {unknown}"


def test_readme_lists_every_alert():
    readme = (DEPLOY.parent / "README.md").read_text()
    for name in alert_names():
        assert f"`{name}`" in readme


def test_the_prometheusrule_carries_the_same_groups():
    resource = yaml.safe_load((DEPLOY / "k8s" / "prometheusrule.yaml").read_text())
    assert resource["spec"]["groups"] == rule_groups(), (
        "deploy/k8s/prometheusrule.yaml is stale: run scripts/render_prometheusrule.py"
    )


# --------------------------------------------------------------------------- a real scrape


def _worker_exposition() -> bytes:
    """What a worker's /metrics serves after a simulated history (same collectors)."""
    pipeline = LocalPipeline(dimensions=("plan",), partitions=2)
    config = SimulationConfig(customers=400, start=date(2026, 1, 1), days=45, seed=3)
    latest = pipeline.run([[orjson.dumps(event) for event in generate_events(config)]])
    detector = SpikeDetector()
    detector.observe_flush(latest.values(), latest)
    registry = CollectorRegistry()
    metrics = Metrics.create(registry)
    registry.register(WindowCollector(lambda: pipeline.aggregator, detector.scores))
    metrics.events.labels(type="churned").inc()
    metrics.invalid_events.labels(reason="not_json").inc()
    metrics.consumer_lag.labels(partition="0").set(3)
    metrics.mark_consumed(5)
    health = HealthMetrics.create(registry)
    health.set_assignment("customer-events", {0, 1}, set())
    health.redelivered.labels(stage="customers").inc()
    health.refetched.labels(stage="segments").inc()
    health.redone.inc()
    health.beyond_retention.inc()
    health.heap_trims.labels(released="true").inc()
    metrics.observe_latency("customers", time.time() - 0.2)
    metrics.flush_seconds.observe(0.1)
    registry.register(TableSizes({"customers": _StoredTable({"c-1": {}})}, reserved_keys=[]))
    register_rocksdb_memory(registry, lambda: 64 * 1024 * 1024)
    register_c_heap(registry, lambda: {"in_use": 90_000_000, "free": 9_000_000, "mapped": 0})
    return generate_latest(registry)


class _StoredTable:
    """The shape TableSizes reads from a faust table on the memory store."""

    def __init__(self, keys: dict[str, object]) -> None:
        self.data = SimpleNamespace(data=keys)


def test_promtool_check_metrics_on_the_worker_exposition():
    exposition = _worker_exposition()
    assert b"churn_customers_start{" in exposition
    result = _run(_tool("promtool"), "check", "metrics", stdin=exposition)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_every_documented_metric_is_exposed():
    exposition = _worker_exposition().decode()
    lines = exposition.splitlines()
    exposed = {line.split("{")[0].split(" ")[0] for line in lines}
    exposed |= {line.split()[2] for line in lines if line.startswith("# TYPE ")}  # histograms
    exposed |= {name.removesuffix("_total") for name in exposed}
    missing = {
        name for name in readme_metrics() if name not in exposed and f"{name}_total" not in exposed
    }
    assert missing == set()


# --------------------------------------------------------------------------- alertmanager


def test_amtool_check_config():
    output = _ok(_run(_tool("amtool"), "check-config", ALERTMANAGER_CONFIG))
    assert "SUCCESS" in output


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=ChurnSpikeCritical"], "churn-pager"),
        (["severity=critical", "alertname=ChurnWorkerDown"], "churn-pager"),
        (["severity=warning", "alertname=ChurnSpike"], "churn-team"),
        (["severity=info", "alertname=ChurnNetRevenueRetentionBelow100"], "churn-team"),
        (["alertname=Other"], "churn-default"),
    ],
)
def test_alertmanager_routes_by_severity(labels, receiver):
    result = _run(
        _tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *labels
    )
    _ok(result)
    assert result.stdout.strip() == receiver


def test_every_alert_severity_has_a_route():
    routes = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["route"]["routes"]
    routed = {matcher.split("=")[1].strip('"') for route in routes for matcher in route["matchers"]}
    severities = {rule["labels"]["severity"] for rule in rules() if "alert" in rule}
    assert severities <= routed
