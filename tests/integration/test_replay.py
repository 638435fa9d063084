"""Duplicates and replays: re-sending the whole input (a replay or a producer retry storm)
changes no metric — no output record is emitted again and no gauge moves."""

from __future__ import annotations

import asyncio
import time

from stream.broker import create_topics, standard_topics
from tests.compare import differences
from tests.integration.kafka_io import (
    OutputFollower,
    WorkerProcess,
    expected_records,
    produce,
    reliability_settings,
    sample_sum,
    shuffled,
    simulated,
)

WINDOW_GAUGES = (
    "churn_customers_start",
    "churn_customers_end",
    "churn_new_customers",
    "churn_churned_customers",
    "churn_reactivated_customers",
    "churn_customer_churn_ratio",
    "churn_net_revenue_retention_ratio",
    "churn_active_customers",
)


def gauges(metrics_text: str) -> list[str]:
    return sorted(line for line in metrics_text.splitlines() if line.startswith(WINDOW_GAUGES))


async def wait_for_counts(worker: WorkerProcess, consumed: int, timeout: float) -> str:
    """Wait until the worker read `consumed` messages and applied or discarded them all."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = worker.scrape()
        read = sample_sum(text, "churn_consumed_messages_total")
        done = sample_sum(text, "churn_applied_events_total") + sample_sum(
            text, "churn_duplicate_events_total"
        )
        if read == consumed and done == consumed:
            return text
        await asyncio.sleep(0.5)
    raise AssertionError(f"worker did not account for {consumed} messages:\n{worker.log_tail()}")


async def test_replaying_the_whole_input_changes_no_metric(broker, topic_prefix, tmp_path):
    settings = reliability_settings(topic_prefix, broker.url, tmp_path)
    await create_topics(broker.bootstrap, standard_topics(settings))
    raw = simulated(customers=200, days=70, seed=21)
    expected = expected_records(raw)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        await worker.wait_for_metrics()
        async with OutputFollower(broker.bootstrap, settings.output_topic) as output:
            await produce(broker.bootstrap, settings.input_topic, raw)
            converged = await output.wait_until(
                lambda latest: not differences(latest, expected), timeout=120
            )
            assert converged, differences(output.latest, expected)[:20]
            before = await wait_for_counts(worker, len(raw), timeout=60)
            await output.poll(3 * settings.emit_interval_seconds)
            snapshot, emitted = dict(output.latest), output.received

            # A replay in the original order, then a retry storm: shuffled, wrong keys.
            await produce(broker.bootstrap, settings.input_topic, raw)
            await produce(
                broker.bootstrap,
                settings.input_topic,
                shuffled(raw, seed=5),
                key_for=lambda value: b"retry",
            )
            after = await wait_for_counts(worker, 3 * len(raw), timeout=120)
            await output.poll(4 * settings.emit_interval_seconds)
            worker.assert_running()
    finally:
        worker.stop()

    assert output.received == emitted, "the replay made the worker emit records again"
    assert output.latest == snapshot
    assert not differences(output.latest, expected)
    replayed = sample_sum(after, "churn_duplicate_events_total") - sample_sum(
        before, "churn_duplicate_events_total"
    )
    assert replayed == 2 * len(raw)
    assert sample_sum(after, "churn_applied_events_total") == sample_sum(
        before, "churn_applied_events_total"
    )
    assert gauges(after) == gauges(before)
    assert sample_sum(after, "churn_invalid_events_total") == 0
