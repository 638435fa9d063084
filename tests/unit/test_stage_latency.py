"""`Metrics.observe_latency`: the age of a message from its Kafka timestamp."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from stream.observability import Metrics


def _observed(registry: CollectorRegistry) -> tuple[float, float]:
    count = registry.get_sample_value("churn_stage_latency_seconds_count", {"stage": "s"})
    total = registry.get_sample_value("churn_stage_latency_seconds_sum", {"stage": "s"})
    return count or 0.0, total or 0.0


@pytest.mark.parametrize("timestamp", [None, -1.0, -0.001, 0.0])
def test_a_message_without_a_timestamp_is_not_observed(timestamp):
    registry = CollectorRegistry()
    metrics = Metrics.create(registry)
    metrics.observe_latency("s", timestamp)
    assert _observed(registry) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("age", "low", "high"),
    [
        (1.5, 1.5, 3.0),  # produced 1.5 s ago
        (-30.0, 0.0, 0.0),  # a producer clock 30 s ahead reads as 0
    ],
)
def test_the_age_is_observed_in_seconds(age, low, high):
    registry = CollectorRegistry()
    metrics = Metrics.create(registry)
    metrics.observe_latency("s", time.time() - age)
    count, total = _observed(registry)
    assert count == 1
    assert low <= total <= high
