"""Soak: a 10-minute steady run at 300 events/s from a fixed population of customers, with
event time = wall clock (as in production). After a warm-up, open file descriptors, table
key counts and RSS must stay flat, and the worker must keep up.

What "flat" means for RSS here: the customer stage must keep every event id (the dedup
set) and every event that may still matter for the retention horizon (CHURN_RETENTION_DAYS)
plus the longest window (367 days) — all ten minutes of this run — so RSS may grow by what
those take; the bound below allows that and nothing more (a leak of even 1 KiB per event
would exceed it). Folding history beyond the horizon is proven in tests/unit/
test_retention.py, not here: it needs more than a year of event time."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaProducer

from stream.broker import create_topics, standard_topics
from tests.integration.kafka_io import (
    WorkerProcess,
    reliability_settings,
    sample_sum,
    sample_value,
)

DURATION_S = 600
WARM_UP_S = 150
RATE = 300
CUSTOMERS = 2000
SAMPLE_EVERY_S = 10
PLANS = {"basic": 19.0, "pro": 49.0, "team": 99.0}
REGIONS = ("eu", "us", "apac")
FD_SLACK = 8
RSS_BYTES_PER_EVENT = 500  # ~260 measured (ids and rows kept per customer); a leak is far above


class SteadyTraffic:
    """Lifecycle events for a fixed population, dated now."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._state: dict[int, str] = {}  # customer -> "active" | "churned"

    def next(self) -> bytes:
        rng = self._rng
        customer = rng.randrange(CUSTOMERS)
        state = self._state.get(customer)
        base = {
            "event_id": uuid.uuid4().hex,
            "customer_id": f"soak-{customer}",
            "occurred_at": datetime.now(UTC).isoformat(),
        }
        if state is None:
            plan = rng.choice(list(PLANS))
            self._state[customer] = "active"
            body = base | {
                "type": "subscribed",
                "mrr": PLANS[plan],
                "attributes": {"plan": plan, "region": rng.choice(REGIONS)},
            }
        elif state == "churned":
            self._state[customer] = "active"
            body = base | {"type": "reactivated", "mrr": PLANS["basic"]}
        else:
            roll = rng.random()
            if roll < 0.80:
                body = base | {"type": "activity"}
            elif roll < 0.90:
                body = base | {"type": "purchase", "amount": round(rng.uniform(1, 200), 2)}
            elif roll < 0.95:
                body = base | {"type": "renewed"}
            elif roll < 0.97:
                plan = rng.choice(list(PLANS))
                body = base | {
                    "type": "plan_changed",
                    "mrr": PLANS[plan],
                    "attributes": {"plan": plan},
                }
            else:
                self._state[customer] = "churned"
                body = base | {"type": "churned"}
        return orjson.dumps(body)


async def steady_producer(bootstrap: str, topic: str, stop: asyncio.Event) -> int:
    traffic = SteadyTraffic(seed=61)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    sent = 0
    began = time.monotonic()
    try:
        while not stop.is_set():
            due = int((time.monotonic() - began) * RATE)
            while sent < due:
                value = traffic.next()
                await producer.send(topic, value, key=orjson.loads(value)["customer_id"].encode())
                sent += 1
            await asyncio.sleep(0.05)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


def _tables(text: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        sample.labels["table"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "churn_table_keys"
    }


async def test_ten_minutes_of_steady_traffic_keep_resources_flat(broker, topic_prefix, tmp_path):
    settings = reliability_settings(
        topic_prefix,
        broker.url,
        tmp_path,
        emit_interval_seconds=1,
        retention_days=30,
    )
    await create_topics(broker.bootstrap, standard_topics(settings))
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    stop = asyncio.Event()
    producing = None
    samples = []
    try:
        await worker.wait_for_metrics()
        producing = asyncio.ensure_future(
            steady_producer(broker.bootstrap, settings.input_topic, stop)
        )
        began = time.monotonic()
        while time.monotonic() - began < DURATION_S:
            await asyncio.sleep(SAMPLE_EVERY_S)
            worker.assert_running()
            text = worker.scrape()
            samples.append(
                {
                    "t": round(time.monotonic() - began),
                    "rss": worker.rss_bytes(),
                    "fds": worker.open_fds(),
                    "tables": _tables(text),
                    "consumed": sample_sum(text, "churn_consumed_messages_total"),
                    "lag": sample_sum(text, "churn_consumer_lag_messages"),
                    "up": sample_value(text, "churn_ingest_up"),
                }
            )
        stop.set()
        sent = await producing
        await asyncio.sleep(5)
        final = worker.scrape()
        worker.assert_running()
    finally:
        stop.set()
        if producing is not None:
            with contextlib.suppress(BaseException):
                await producing
        worker.stop()

    steady = [s for s in samples if s["t"] >= WARM_UP_S]
    first, last = steady[0], steady[-1]
    report = [
        (s["t"], round(s["rss"] / 2**20, 1), s["fds"], s["tables"], s["lag"]) for s in samples
    ]
    print(f"soak: {sent} events; (t, RSS MiB, fds, tables, lag):", *report, sep="\n  ")

    assert sample_sum(final, "churn_consumed_messages_total") == sent, "the worker fell behind"
    assert all(s["up"] == 1 for s in samples)
    fds = [s["fds"] for s in steady]
    assert max(fds) - min(fds) <= FD_SLACK, fds
    for table in ("customers", "aggregate-entries", "aggregate-meta", "aggregate-emitted"):
        sizes = [s["tables"][table] for s in steady]
        assert max(sizes) - min(sizes) <= max(100, 0.05 * max(sizes)), (table, sizes)
    assert max(s["tables"]["customers"] for s in samples) <= CUSTOMERS
    events_after_warm_up = last["consumed"] - first["consumed"]
    growth = last["rss"] - first["rss"]
    per_event = growth / events_after_warm_up
    print(f"soak: RSS +{growth / 2**20:.1f} MiB after warm-up, {per_event:.0f} B/event")
    assert growth <= RSS_BYTES_PER_EVENT * events_after_warm_up + 32 * 2**20, (
        f"RSS grew {growth / 2**20:.1f} MiB over {events_after_warm_up:.0f} events"
    )
    assert max(s["lag"] for s in steady) < 5 * RATE, "lag kept growing"
