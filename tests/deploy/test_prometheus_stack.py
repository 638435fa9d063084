"""The test helper that runs the Debian Prometheus and Alertmanager on loopback works."""

from __future__ import annotations

import shutil

import pytest

from tests.deploy.prometheus_stack import PrometheusStack
from tests.deploy.test_prometheus_rules import RULE_FILES


@pytest.fixture(scope="module")
def stack():
    with PrometheusStack(rule_files=RULE_FILES, alertmanager=True) as running:
        yield running


def test_prometheus_scrapes_itself_every_second(stack):
    result = stack.wait_for('up{job="prometheus"} == 1')
    assert len(result) == 1
    assert stack.values("prometheus_build_info")
    samples = stack.wait_for(
        'count_over_time(up{job="prometheus"}[5s])', lambda r: r and float(r[0]["value"][1]) >= 3
    )
    assert float(samples[0]["value"][1]) >= 3  # 1 s scrape interval


def test_the_rule_files_load_and_alertmanager_is_attached(stack):
    groups = {group["name"] for group in stack.rules()}
    assert groups == {"churn-stream-segments", "churn-stream-processor"}
    assert all(health == "up" for health in stack.targets_health().values())
    assert stack.alerts() == []  # Alertmanager answers and nothing fires with no worker
    # The stack's own view of a worker that is not there: no churn series at all.
    assert stack.query("segment:churn_customers_start:max") == []


def test_stop_ends_both_processes():
    stack = PrometheusStack(alertmanager=True)
    stack.start()
    processes = [process.process for process in stack._processes]
    stack.stop()
    assert all(process.poll() is not None for process in processes)
    assert shutil.which("prometheus")  # the Debian binary, as in CI
