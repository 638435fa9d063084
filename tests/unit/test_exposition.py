"""/metrics restricted to some sample names (`name[]`) renders only those, and does not
run the collectors of the rest."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from stream.observability import Metrics, TableSizes, WindowCollector, exposition


class _CountingTable:
    """The shape TableSizes reads (a faust table on the memory store), counting reads."""

    def __init__(self, keys: dict[str, object], reads: list[str]) -> None:
        self._keys = keys
        self._reads = reads

    @property
    def data(self) -> SimpleNamespace:
        self._reads.append("table")
        return SimpleNamespace(data=self._keys)


def _registry(reads: list[str]) -> tuple[CollectorRegistry, Metrics]:
    registry = CollectorRegistry()
    metrics = Metrics.create(registry)

    def aggregator() -> None:
        reads.append("aggregator")

    registry.register(WindowCollector(aggregator, lambda: [("day", "all", "all", 2.5)]))
    table = _CountingTable({"c-1": {}}, reads)
    registry.register(TableSizes({"customers": table}, reserved_keys=[]))
    return registry, metrics


def _samples(page: bytes) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(page.decode())
        for sample in family.samples
    }


def test_restricted_exposition_renders_only_the_names_asked_for():
    reads: list[str] = []
    registry, metrics = _registry(reads)
    metrics.applied_events.inc(7)
    metrics.consumed_messages.inc(9)

    page = exposition(registry, ["churn_applied_events_total", "churn_consumed_messages_total"])

    assert _samples(page) == {
        "churn_applied_events_total": 7.0,
        "churn_consumed_messages_total": 9.0,
    }
    assert reads == []  # neither the window gauges nor the table sizes were computed


def test_a_window_gauge_asked_for_runs_its_collector_only():
    reads: list[str] = []
    registry, metrics = _registry(reads)
    metrics.applied_events.inc(3)

    page = exposition(registry, ["churn_spike_score"])

    assert _samples(page) == {"churn_spike_score": 2.5}
    assert reads == ["aggregator"]


def test_unrestricted_exposition_renders_everything():
    reads: list[str] = []
    registry, metrics = _registry(reads)
    metrics.applied_events.inc(3)

    page = exposition(registry).decode()

    assert "churn_applied_events_total 3.0" in page
    assert "# TYPE churn_customers_start gauge" in page
    assert 'churn_spike_score{dimension="all",segment="all",window="day"} 2.5' in page
    assert 'churn_table_keys{table="customers"} 1.0' in page
    assert sorted(reads) == ["aggregator", "table"]
