"""The customer stage lets a backlog queue up (`CHURN_CUSTOMER_BACKLOG_HOLD_MS`): while
the ingest stage is more than a batch behind, it waits after each batch so the next one is
larger. On a real broker: the results stay exact, and the same backlog is applied in fewer
customer batches than without the wait."""

from __future__ import annotations

from stream.broker import create_topics, standard_topics
from tests.integration.kafka_io import (
    WorkerProcess,
    converge,
    expected_records,
    produce,
    reliability_settings,
    sample_sum,
    simulated,
)


async def applied_in_batches(broker, prefix: str, tmp_path, hold_ms: int) -> tuple[float, float]:
    """A worker started over a backlog: (customer batches, events applied), once its
    output is exact."""
    tmp_path.mkdir()
    settings = reliability_settings(
        prefix,
        broker.url,
        tmp_path,
        batch_max_records=500,  # a backlog of many batches
        customer_backlog_hold_ms=hold_ms,
    )
    await create_topics(broker.bootstrap, standard_topics(settings))
    raw = simulated(customers=600, days=90, seed=11)
    expected = expected_records(raw)
    await produce(broker.bootstrap, settings.input_topic, raw)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        await worker.wait_for_metrics()
        await converge(broker.bootstrap, settings.output_topic, expected, timeout=180)
        metrics = worker.scrape()
        worker.assert_running()
    finally:
        worker.stop()
    return (
        sample_sum(metrics, "churn_customer_batches_total"),
        sample_sum(metrics, "churn_applied_events_total"),
    )


async def test_a_backlog_is_applied_exactly_in_fewer_customer_batches(
    broker, topic_prefix, tmp_path
):
    without = await applied_in_batches(broker, f"{topic_prefix}a-", tmp_path / "a", 0)
    held = await applied_in_batches(broker, f"{topic_prefix}b-", tmp_path / "b", 3_000)
    (batches_without, applied_without), (batches_held, applied_held) = without, held
    assert applied_held == applied_without > 0
    print(f"customer batches: {batches_without:.0f} without the wait, {batches_held:.0f} with")
    assert 0 < batches_held < batches_without, (batches_held, batches_without)
