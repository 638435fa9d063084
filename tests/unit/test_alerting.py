"""Spike alerts through the aggregator's flushes (the worker's wiring, without Kafka)."""

import zlib
from datetime import UTC, date, datetime

import orjson

from stream.alerting import SpikeAlerts
from stream.local_pipeline import LocalPipeline
from stream.simulator import SimulationConfig, Spike, generate_events

SPIKE_START = date(2026, 3, 20)


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


def test_a_backfill_read_unevenly_across_input_partitions_alerts_on_the_spike_day():
    """The worker reads a backlog a few hundred messages per input partition at a time, so
    one partition runs ahead in event time. A day is complete only once every partition
    has passed it: the spike must still be seen on its first day, as with one partition."""
    config = SimulationConfig(
        customers=4000,
        start=date(2026, 1, 1),
        days=82,
        seed=11,
        activity_rate=0.0,
        spikes=(Spike(SPIKE_START, 4, 6.0),),
    )
    partitions: list[list[bytes]] = [[], [], [], []]
    for event in generate_events(config):
        customer = str(event["customer_id"]).encode()
        partitions[zlib.crc32(customer) % 4].append(orjson.dumps(event))
    pipeline = LocalPipeline(dimensions=("plan",))
    for start in range(0, max(map(len, partitions)), 250):
        for number, messages in enumerate(partitions):
            if messages[start : start + 250]:
                pipeline.ingest(messages[start : start + 250], input_partition=number)
                pipeline.flush()
    pipeline.flush()

    firing = [a for a in pipeline.alerts if a.status == "firing" and a.dimension == "all"]
    assert firing, "the spike was not detected"
    start = datetime(SPIKE_START.year, SPIKE_START.month, SPIKE_START.day, tzinfo=UTC)
    assert min(a.first_seen for a in firing) == start
    assert all(a.first_seen >= start for a in pipeline.alerts)


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
