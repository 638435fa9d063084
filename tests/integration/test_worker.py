"""A worker process on the real embedded broker: exact records, /metrics, dead letters."""

from __future__ import annotations

import re
from collections import Counter
from datetime import date

import orjson
import pytest

from stream.batch import compute_records
from stream.broker import create_topics, free_port, standard_topics
from stream.events import compact, parse_event
from stream.settings import Settings
from stream.simulator import SimulationConfig, generate_events
from tests.compare import differences
from tests.integration.kafka_io import (
    OutputFollower,
    WorkerProcess,
    produce,
    read_all,
    sample_names,
    sample_sum,
    sample_value,
)

DIMENSIONS = ("plan", "region")
INVALID = [
    (b"not json at all", "not_json"),
    (b'{"event_id":"x1","type":"churned","customer_id":"c1"}', "missing_field"),
    (
        b'{"event_id":"x2","type":"upgraded","customer_id":"c1","occurred_at":"2026-01-02T00:00:00Z"}',
        "unknown_type",
    ),
    (
        b'{"event_id":"x3","type":"churned","customer_id":"c1","occurred_at":"2026-01-02T00:00:00"}',
        "naive_timestamp",
    ),
    (
        b'{"event_id":"x4","type":"purchase","customer_id":"c1","occurred_at":"2026-01-02T00:00:00Z",'
        b'"amount":-5}',
        "invalid_amount",
    ),
]


def missing_or_wrong_key(value: bytes) -> bytes | None:
    """Half of these messages have no key, the other half a key that is not the customer."""
    return None if hash(value) % 2 else b"not-the-customer"


def worker_settings(prefix: str, broker_url: str, tmp_path, store: str = "memory://") -> Settings:
    return Settings(
        broker=broker_url,
        app_id=f"{prefix}app",
        input_topic=f"{prefix}events",
        output_topic=f"{prefix}metrics",
        dlq_topic=f"{prefix}dlq",
        dimensions=DIMENSIONS,
        metrics_port=free_port(),
        data_dir=tmp_path / "data",
        emit_interval_seconds=0.5,
        heap_trim_interval_seconds=0.5,
        session_timeout_seconds=6,
        max_future_seconds=10**9,
        store=store,
    )


def simulated(customers: int, days: int, seed: int) -> list[bytes]:
    config = SimulationConfig(
        customers=customers,
        start=date(2026, 1, 1),
        days=days,
        seed=seed,
        duplicate_fraction=0.03,
        out_of_order_fraction=0.05,
    )
    return [orjson.dumps(event) for event in generate_events(config)]


def expected_records(raw: list[bytes]) -> dict[str, dict]:
    events = [compact(parse_event(value), DIMENSIONS) for value in raw]
    return {
        f"{r['window']}/{r['dimension']}/{r['segment']}/{r['window_start']}": r
        for r in compute_records(events, DIMENSIONS)
    }


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
async def test_worker_emits_exact_metrics_and_dead_letters(broker, topic_prefix, tmp_path, store):
    settings = worker_settings(topic_prefix, broker.url, tmp_path, store)
    await create_topics(broker.bootstrap, standard_topics(settings))
    valid = simulated(customers=150, days=75, seed=7)
    expected = expected_records(valid)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        await worker.wait_for_metrics()
        half = len(valid) // 2
        await produce(broker.bootstrap, settings.input_topic, valid[:half])
        await produce(broker.bootstrap, settings.input_topic, [raw for raw, _ in INVALID])
        await produce(
            broker.bootstrap, settings.input_topic, valid[half:], key_for=missing_or_wrong_key
        )
        async with OutputFollower(broker.bootstrap, settings.output_topic) as output:
            converged = await output.wait_until(
                lambda latest: not differences(latest, expected), timeout=120
            )
            assert converged, differences(output.latest, expected)[:20]
        metrics = worker.scrape()
        applied = worker.scrape(["churn_applied_events_total", "churn_events_total"])
        worker.assert_running()
    finally:
        worker.stop()

    # a restricted scrape: only the samples asked for, the same values
    assert sample_names(applied) == {"churn_applied_events_total", "churn_events_total"}
    for name in sample_names(applied):
        assert sample_sum(applied, name) == sample_sum(metrics, name) > 0, name

    open_month = max(
        (r for r in expected.values() if r["window"] == "month" and r["dimension"] == "all"),
        key=lambda r: r["window_start"],
    )
    labels = {"window": "month", "dimension": "all", "segment": "all"}
    assert sample_value(metrics, "churn_customers_start", **labels) == open_month["customers_start"]
    assert sample_value(metrics, "churn_customers_end", **labels) == open_month["customers_end"]
    assert (
        sample_value(metrics, "churn_churned_customers", **labels)
        == open_month["churned_customers"]
    )
    for _, reason in INVALID:
        assert sample_value(metrics, "churn_invalid_events_total", reason=reason) == 1
    types = Counter(orjson.loads(raw)["type"] for raw in valid)
    for event_type, count in types.items():
        assert sample_value(metrics, "churn_events_total", type=event_type) == count
    assert "customer_id" not in metrics and 'segment="c0' not in metrics
    for stage in ("ingest", "customers", "segments"):
        handled = sample_value(metrics, "churn_stage_latency_seconds_count", stage=stage)
        seconds = sample_value(metrics, "churn_stage_latency_seconds_sum", stage=stage)
        assert handled and handled > 0, stage
        assert seconds is not None and 0 < seconds / handled < 120, (stage, seconds, handled)
    rocksdb_memory = sample_value(metrics, "churn_rocksdb_memory_bytes")
    if store == "rocksdb://":  # the memtables holding what was written, at least
        budget = settings.rocksdb_memory_mb * 1024 * 1024
        assert rocksdb_memory is not None and 0 < rocksdb_memory <= budget, rocksdb_memory
    else:
        assert rocksdb_memory is None
    assert sample_sum(metrics, "churn_heap_trims_total") > 0
    heap_in_use = sample_value(metrics, "churn_c_heap_bytes", kind="in_use")
    assert heap_in_use is not None and heap_in_use > 0
    # once, when the first restore was over (glibc here), not at start
    log = worker.log_text()
    assert log.count("C heap: blocks of 128 KiB or more are mapped") == 1
    restored = log.index("[^---Recovery]: Restore complete!")
    assert log.index("C heap: blocks of 128 KiB or more are mapped") > restored
    flushes = sample_value(metrics, "churn_flush_seconds_count")
    flush_seconds = sample_value(metrics, "churn_flush_seconds_sum")
    assert flushes and flush_seconds is not None and 0 < flush_seconds / flushes < 60

    dead = [orjson.loads(m.value) for m in await read_all(broker.bootstrap, settings.dlq_topic)]
    assert sorted(d["reason"] for d in dead) == sorted(reason for _, reason in INVALID)
    assert {d["original"] for d in dead} == {raw.decode() for raw, _ in INVALID}
    assert all(d["source_topic"] == settings.input_topic and d["source_offset"] >= 0 for d in dead)


@pytest.mark.parametrize("duration", [25])
def test_demo_runs_and_exits_zero_having_emitted(tmp_path, duration):
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream.cli",
            "demo",
            "--duration",
            str(duration),
            "--metrics-port",
            str(free_port()),
            "--rate",
            "1500",
            "--customers",
            "300",
            "--days",
            "60",
        ],
        capture_output=True,
        timeout=180,
        text=True,
        cwd=tmp_path,  # as on a fresh clone: no data/ directory yet
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "data").glob("demo-*")), "the demo keeps its state under data/"
    assert "churn-stream demo" in result.stdout
    assert "month" in result.stdout
    # the count of events sent moves while the simulator produces (1,500/s for a few s)
    sent = [int(n.replace(",", "")) for n in re.findall(r"events sent ([\d,]+)", result.stdout)]
    assert sent == sorted(sent) and sent[-1] > 0, sent
    assert any(0 < n < sent[-1] for n in sent), sent
