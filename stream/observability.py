"""Prometheus metrics of one worker, built on an injected registry.

Counters are updated by the stages; window gauges are computed at scrape time from the
aggregates this worker owns (a custom collector), so a scrape never races an update and
no gauge is kept for windows that are no longer open. No customer id is ever a label.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from stream import windows
from stream.aggregation import Aggregator
from stream.formulas import INDEX, derived_metrics, published_counts

# Seconds: fine where the p99 target (2 s end to end) lies, coarse for backlogs and replays.
LATENCY_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
    60.0, 300.0, 3600.0,
)  # fmt: skip

# gauge name -> (help, record field): read from the published counts and derived metrics
_WINDOW_GAUGES = {
    "churn_customers_start": (
        "Customers active at the start of the open window.",
        "customers_start",
    ),
    "churn_customers_end": (
        "Customers active at the end (so far) of the open window.",
        "customers_end",
    ),
    "churn_new_customers": ("First-ever activations in the open window.", "new_customers"),
    "churn_churned_customers": ("Customers active at start and not now.", "churned_customers"),
    "churn_reactivated_customers": (
        "Returned customers in the open window.",
        "reactivated_customers",
    ),
    "churn_mrr_start": ("MRR at the start of the open window.", "mrr_start"),
    "churn_mrr_end": ("MRR at the end (so far) of the open window.", "mrr_end"),
    "churn_new_mrr": ("MRR of the new customers.", "new_mrr"),
    "churn_expansion_mrr": ("MRR increases of customers active at start and end.", "expansion_mrr"),
    "churn_contraction_mrr": (
        "MRR decreases of customers active at start and end.",
        "contraction_mrr",
    ),
    "churn_churned_mrr": ("MRR at start of the churned customers.", "churned_mrr"),
    "churn_reactivation_mrr": ("MRR of the reactivated customers.", "reactivation_mrr"),
    "churn_purchasing_customers": (
        "Customers with a purchase in the open window.",
        "purchasing_customers",
    ),
    "churn_purchases": ("Purchases in the open window.", "purchases"),
    "churn_customer_churn_ratio": ("Churn rate of the open window.", "churn_rate"),
    "churn_customer_retention_ratio": ("Retention rate of the open window.", "retention_rate"),
    "churn_net_growth_ratio": ("Net growth of the open window.", "net_growth_rate"),
    "churn_gross_mrr_churn_ratio": ("Gross MRR churn of the open window.", "gross_mrr_churn_rate"),
    "churn_net_revenue_retention_ratio": (
        "Net revenue retention of the open window.",
        "net_revenue_retention",
    ),
    "churn_repeat_purchase_ratio": (
        "Repeat-purchase rate of the open window.",
        "repeat_purchase_rate",
    ),
    "churn_monthly_churn_ratio": (
        "Churn of the open window rescaled to a month.",
        "monthly_churn_rate",
    ),
    "churn_average_purchase_value": (
        "Mean purchase amount in the open window.",
        "average_purchase_value",
    ),
    "churn_customer_lifetime_value": (
        "CLV from the open window (README).",
        "customer_lifetime_value",
    ),
}
_WINDOW_LABELS = ("window", "dimension", "segment")


def exposition(registry: CollectorRegistry, names: Sequence[str] = ()) -> bytes:
    """The registry in the text format; with `names` (the `name[]` query parameters that
    prometheus_client's own handlers take), only those samples. Collectors whose names are
    not asked for are not run: a few counters then cost no rendering of every segment's
    gauges (the benchmark reads its progress so, once a second)."""
    return generate_latest(registry.restricted_registry(names) if names else registry)


def _window_families() -> tuple[dict[str, GaugeMetricFamily], GaugeMetricFamily, GaugeMetricFamily]:
    """Empty families of `WindowCollector`: the window gauges, active customers, spikes."""
    families = {
        name: GaugeMetricFamily(name, help_text, labels=_WINDOW_LABELS)
        for name, (help_text, _) in _WINDOW_GAUGES.items()
    }
    active = GaugeMetricFamily(
        "churn_active_customers",
        "Customers active now (end of the open day window), by segment.",
        labels=("dimension", "segment"),
    )
    spikes = GaugeMetricFamily(
        "churn_spike_score",
        "How abnormal the latest day's churn is against its own baseline (z-like).",
        labels=_WINDOW_LABELS,
    )
    return families, active, spikes


class WindowCollector(Collector):
    """Gauges of the open window of every kind, read from the aggregator per scrape."""

    def __init__(
        self,
        aggregator: Callable[[], Aggregator | None],
        spike_scores: Callable[[], Iterable[tuple[str, str, str, float]]] = tuple,
        published: Callable[[str], bool] = lambda dimension: True,
    ) -> None:
        self._aggregator = aggregator
        self._spike_scores = spike_scores
        self._published = published  # False while a dimension's counts are being restored

    def describe(self) -> list[Metric]:
        """The families without samples: their names let a scrape restricted to other
        names (`/metrics?name[]=...`) skip rendering every segment's gauges."""
        families, active, spikes = _window_families()
        return [*families.values(), active, spikes]

    def collect(self) -> Iterator[Metric]:
        families, active, spikes = _window_families()
        for window, dimension, segment, score in self._spike_scores():
            spikes.add_metric([window, dimension, segment], score)
        aggregator = self._aggregator()
        if aggregator is not None:
            for dimension in filter(self._published, aggregator.dimensions()):
                self._collect_dimension(aggregator, dimension, families, active)
        yield from families.values()
        yield active
        yield spikes

    def _collect_dimension(
        self,
        aggregator: Aggregator,
        dimension: str,
        families: dict[str, GaugeMetricFamily],
        active: GaugeMetricFamily,
    ) -> None:
        for kind in windows.ALL_KINDS:
            k = aggregator.open_window(dimension, kind)
            if k is None:
                continue
            for segment in aggregator.segments(dimension, kind.name):
                counts = aggregator.window_counts(dimension, kind.name, segment, k)
                labels = [kind.name, dimension, segment]
                values = {
                    **published_counts(counts),
                    **derived_metrics(counts, windows.window_days(kind, k)),
                }
                for name, (_, field) in _WINDOW_GAUGES.items():
                    value = values[field]
                    if value is not None:
                        families[name].add_metric(labels, value)
                if kind is windows.DAY:
                    active.add_metric([dimension, segment], counts[INDEX["customers_end"]])


@dataclass
class Metrics:
    registry: CollectorRegistry
    events: Counter
    invalid_events: Counter
    late_events: Counter
    duplicate_events: Counter
    applied_events: Counter
    customer_batches: Counter
    consumed_messages: Counter
    watermark: Gauge
    last_event_wall: Gauge
    consumer_lag: Gauge
    up: Gauge
    stage_latency: Histogram
    flush_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Metrics:
        return cls(
            registry=registry,
            events=Counter(
                "churn_events", "Valid events consumed, by type.", ["type"], registry=registry
            ),
            invalid_events=Counter(
                "churn_invalid_events",
                "Input dead-lettered, by reason.",
                ["reason"],
                registry=registry,
            ),
            late_events=Counter(
                "churn_late_events",
                "Events for a day window that was already final.",
                registry=registry,
            ),
            duplicate_events=Counter(
                "churn_duplicate_events",
                "Events whose event_id was already applied.",
                registry=registry,
            ),
            applied_events=Counter(
                "churn_applied_events", "Events applied to a customer history.", registry=registry
            ),
            customer_batches=Counter(
                "churn_customer_batches",
                "Batches the customer stage applied (each customer in one is read, recomputed "
                "and written once).",
                registry=registry,
            ),
            consumed_messages=Counter(
                "churn_consumed_messages",
                "Input messages read by the ingest stage.",
                registry=registry,
            ),
            watermark=Gauge(
                "churn_watermark_timestamp_seconds",
                "Event-time watermark of the ingest stage.",
                registry=registry,
            ),
            last_event_wall=Gauge(
                "churn_last_event_timestamp_seconds",
                "Wall-clock time the last input was read.",
                registry=registry,
            ),
            consumer_lag=Gauge(
                "churn_consumer_lag_messages",
                "Input messages not yet read, by partition.",
                ["partition"],
                registry=registry,
            ),
            up=Gauge(
                "churn_ingest_up",
                "1 while the ingest stage is connected and consuming.",
                registry=registry,
            ),
            stage_latency=Histogram(
                "churn_stage_latency_seconds",
                "Seconds from a message's Kafka timestamp to the end of its handling, by stage "
                "(ingest: a batch's first record of each input partition, until it is forwarded).",
                ["stage"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            flush_seconds=Histogram(
                "churn_flush_seconds",
                "Duration of each segment flush that emitted records, until acknowledged.",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
        )

    def observe_latency(self, stage: str, produced_s: float | None) -> None:
        """A message of `stage`, produced at `produced_s` (its Kafka timestamp), handled
        now; a producer clock ahead of this host's counts as 0. A message without a
        timestamp (None, or -1 from a pre-0.10 producer) is not observed."""
        if produced_s is None or produced_s <= 0:
            return
        self.stage_latency.labels(stage).observe(max(0.0, time.time() - produced_s))

    def mark_consumed(self, messages: int) -> None:
        self.consumed_messages.inc(messages)
        self.last_event_wall.set(time.time())


@dataclass
class HealthMetrics:
    """Worker health beyond `Metrics`: assignments and the stages' recovery counters."""

    assigned: Gauge
    redelivered: Counter
    refetched: Counter
    redone: Counter
    beyond_retention: Counter
    heap_trims: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> HealthMetrics:
        return cls(
            assigned=Gauge(
                "churn_assigned_partition",
                "1 for every partition this worker consumes, by topic.",
                ["topic", "partition"],
                registry=registry,
            ),
            redelivered=Counter(
                "churn_redelivered_messages",
                "Internal messages delivered again after they were applied (skipped).",
                ["stage"],
                registry=registry,
            ),
            refetched=Counter(
                "churn_refetched_messages",
                "Internal messages the consumer skipped, read back and applied in order.",
                ["stage"],
                registry=registry,
            ),
            redone=Counter(
                "churn_redone_messages",
                "Customer batches completed after a crash from their write-ahead record.",
                registry=registry,
            ),
            beyond_retention=Counter(
                "churn_beyond_retention_events",
                "Valid events older than the retention horizon: counted, not applied.",
                registry=registry,
            ),
            heap_trims=Counter(
                "churn_heap_trims",
                "Scheduled returns of the C heap's free pages to the system, by whether "
                "they released any (CHURN_HEAP_TRIM_INTERVAL_SECONDS).",
                ["released"],
                registry=registry,
            ),
        )

    def set_assignment(self, topic: str, partitions: set[int], previous: set[int]) -> None:
        for partition in previous - partitions:
            with contextlib.suppress(KeyError):
                self.assigned.remove(topic, str(partition))
        for partition in partitions:
            self.assigned.labels(topic, str(partition)).set(1)


def register_rocksdb_memory(registry: CollectorRegistry, usage_bytes: Callable[[], float]) -> None:
    """`churn_rocksdb_memory_bytes`, read at scrape time (RocksDB store only)."""
    Gauge(
        "churn_rocksdb_memory_bytes",
        "Bytes of the shared RocksDB block cache in use, memtables included "
        "(CHURN_ROCKSDB_MEMORY_MB bounds it).",
        registry=registry,
    ).set_function(usage_bytes)


class CHeap(Collector):
    """`churn_c_heap_bytes{kind}`: the C heap's bytes in use, free inside it (resident
    until trimmed) and in blocks mapped on their own, read at scrape time."""

    def __init__(self, figures: Callable[[], dict[str, int]]) -> None:
        self._figures = figures

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for kind, value in self._figures().items():
            family.add_metric([kind], value)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "churn_c_heap_bytes",
            "The C heap (glibc malloc): bytes in use, free inside it, in mapped blocks.",
            labels=["kind"],
        )


def register_c_heap(registry: CollectorRegistry, figures: Callable[[], dict[str, int]]) -> None:
    registry.register(CHeap(figures))


def _table_keys_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "churn_table_keys", "Keys held in each table of this worker.", labels=["table"]
    )


class TableSizes(Collector):
    """`churn_table_keys{table}`: keys per table, bookkeeping keys excluded. Memory store
    only: counting a RocksDB table would mean iterating it."""

    def __init__(self, tables: dict[str, Any], reserved_keys: Iterable[str | bytes]) -> None:
        self._tables = tables
        self._reserved_keys = list(reserved_keys)

    def describe(self) -> list[Metric]:
        return [_table_keys_family()]

    def collect(self) -> Iterator[Metric]:
        family = _table_keys_family()
        for name, table in self._tables.items():
            keys = getattr(table.data, "data", None)
            if isinstance(keys, dict):
                reserved = sum(1 for key in self._reserved_keys if key in keys)
                family.add_metric([name], len(keys) - reserved)
        yield family
