"""Spike alerts through the aggregator's flushes (the worker's wiring, without Kafka)."""

import zlib
from datetime import UTC, date, datetime

import orjson

from stream.aggregation import Aggregator
from stream.alerting import SpikeAlerts
from stream.local_pipeline import LocalPipeline
from stream.simulator import SimulationConfig, Spike, generate_events

SPIKE_START = date(2026, 3, 20)
SPIKE_DAY = datetime(SPIKE_START.year, SPIKE_START.month, SPIKE_START.day, tzinfo=UTC)


def run(spikes: tuple[Spike, ...]) -> LocalPipeline:
    config = SimulationConfig(
        customers=4000, start=date(2026, 1, 1), days=100, seed=11, spikes=spikes
    )
    raw = [orjson.dumps(event) for event in generate_events(config)]
    pipeline = LocalPipeline(dimensions=("plan",))
    pipeline.run([raw[i : i + 2000] for i in range(0, len(raw), 2000)])
    return pipeline


def test_an_injected_spike_fires_within_a_day_and_resolves_and_a_quiet_run_stays_quiet():
    spiked = run((Spike(SPIKE_START, 4, 6.0),))
    firing = [a for a in spiked.alerts if a.status == "firing" and a.dimension == "all"]
    assert firing, "the spike was not detected"
    first = min(a.first_seen for a in firing)
    start = datetime(SPIKE_START.year, SPIKE_START.month, SPIKE_START.day, tzinfo=UTC)
    assert start <= first < start.replace(day=start.day + 1)
    resolved = [a for a in spiked.alerts if a.status == "resolved" and a.dimension == "all"]
    assert resolved and max(a.day for a in resolved) > first
    scores = {(w, d, s): v for w, d, s, v in spiked.spikes.scores()}
    assert ("day", "all", "all") in scores and ("rolling_7d", "plan", "pro") in scores

    quiet = run(())
    assert [a for a in quiet.alerts if a.status == "firing"] == []


def _spike_history(activity_rate: float = 0.0) -> list[bytes]:
    config = SimulationConfig(
        customers=4000,
        start=date(2026, 1, 1),
        days=82,
        seed=11,
        activity_rate=activity_rate,
        spikes=(Spike(SPIKE_START, 4, 6.0),),
    )
    return [orjson.dumps(event) for event in generate_events(config)]


def _first_seen(pipeline: LocalPipeline) -> datetime:
    firing = [a for a in pipeline.alerts if a.status == "firing" and a.dimension == "all"]
    assert firing, "the spike was not detected"
    assert all(a.first_seen >= SPIKE_DAY for a in pipeline.alerts)
    return min(a.first_seen for a in firing)


def test_a_backfill_read_unevenly_across_input_partitions_alerts_on_the_spike_day():
    """The worker reads a backlog a few hundred messages per input partition at a time, so
    one partition runs ahead in event time. A day is complete only once every partition
    has passed it: the spike must still be seen on its first day, as with one partition."""
    partitions: list[list[bytes]] = [[], [], [], []]
    for raw in _spike_history():
        customer = orjson.loads(raw)["customer_id"].encode()
        partitions[zlib.crc32(customer) % 4].append(raw)
    pipeline = LocalPipeline(dimensions=("plan",))
    for start in range(0, max(map(len, partitions)), 250):
        for number, messages in enumerate(partitions):
            if messages[start : start + 250]:
                pipeline.ingest(messages[start : start + 250], input_partition=number)
                pipeline.flush()
    pipeline.flush()
    assert _first_seen(pipeline) == SPIKE_DAY


class LaggingCustomerPartitions(LocalPipeline):
    """Customer partitions 1-3 get each message `lag` ingest batches after partition 0 (the
    worker's customers agent serves its partitions unevenly): the segment stage hears of a
    watermark from partition 0 before the others' events below it are applied."""

    def __init__(self, lag: int) -> None:
        super().__init__(dimensions=("plan",))
        self.lag = lag
        self.held: list[tuple[int, bytes]] = []

    def _customer_message(self, partition: int, raw: bytes) -> None:
        if partition == 0:
            super()._customer_message(partition, raw)
            return
        self.held.append((partition, raw))
        while len(self.held) > 3 * self.lag:
            super()._customer_message(*self.held.pop(0))
            self.flush()

    def drain(self) -> None:
        while self.held:
            super()._customer_message(*self.held.pop(0))
        self.flush()


def test_a_customer_partition_behind_the_others_does_not_finish_a_day_early():
    history = _spike_history()
    pipeline = LaggingCustomerPartitions(lag=2)
    pipeline.run([history[i : i + 300] for i in range(0, len(history), 300)])
    pipeline.drain()
    assert _first_seen(pipeline) == SPIKE_DAY


def test_applied_through_is_the_slowest_customer_partitions_watermark_and_is_stored():
    stores: tuple[dict, dict, dict] = ({}, {}, {})
    aggregator = Aggregator(*stores, grace_ms=0, max_segments=50)
    aggregator.apply("plan", 0, 5, {0: 9_000, 1: 7_000}, {})
    aggregator.apply("plan", 1, 3, {0: 4_000, 1: 6_000}, {})
    aggregator.apply("plan", 1, 2, {0: 3_000}, {})  # an older message again: no step back
    meta = aggregator.meta("plan")
    assert meta.watermark_ms == 7_000  # the most advanced view of each input partition
    assert meta.applied_through_ms == 4_000  # customer partition 1 has applied less
    restored = Aggregator(*stores, grace_ms=0, max_segments=50)
    restored.load()
    assert restored.meta("plan").applied_through_ms == 4_000
    assert Aggregator({}, {}, {}, grace_ms=0, max_segments=50).meta("x").applied_through_ms is None


def test_load_restores_only_the_dimensions_this_process_owns():
    store: dict[str, object] = {}
    pipeline = LocalPipeline(dimensions=("plan",), partitions=2)
    pipeline.spikes = SpikeAlerts(store)
    config = SimulationConfig(customers=300, start=date(2026, 1, 1), days=30, seed=5)
    pipeline.run([[orjson.dumps(event) for event in generate_events(config)]])
    assert set(store) == {"all", "plan"}

    reader = SpikeAlerts(store)
    reader.load(lambda dimension: dimension == "plan")
    restored = {dimension for _, dimension, _, _ in reader.scores()}
    assert restored == {"plan"}
    assert sorted(reader.scores()) == sorted(
        score for score in pipeline.spikes.scores() if score[1] == "plan"
    )
