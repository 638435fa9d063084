"""A crash in the middle of a batch of several customer-batch messages (README,
Guarantees): the restarted worker completes that batch, reading its messages back from
Kafka, and the output equals the batch result exactly."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from stream.broker import create_topics, standard_topics
from tests.integration.kafka_io import (
    WorkerProcess,
    converge,
    expected_records,
    produce,
    reliability_settings,
    simulated,
)

CRASH_IN_BATCH = {
    "PYTHONPATH": str(Path(__file__).parent / "crash_in_batch"),
    "CRASH_IN_BATCH": "1",
}


async def exited(worker: WorkerProcess, timeout: float) -> int:
    deadline = asyncio.get_running_loop().time() + timeout
    while worker.running():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the worker did not crash within {timeout}s")
        await asyncio.sleep(0.2)
    return worker.wait(1)


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
async def test_a_batch_of_several_messages_cut_off_by_a_crash_is_completed_exactly(
    broker, topic_prefix, tmp_path, store
):
    # Small ingest batches over a backlog: many customer-batch messages queue per partition.
    settings = reliability_settings(
        topic_prefix, broker.url, tmp_path, store=store, batch_max_records=100
    )
    await create_topics(broker.bootstrap, standard_topics(settings))
    raw = simulated(customers=300, days=90, seed=41)
    await produce(broker.bootstrap, settings.input_topic, raw)
    log_path = tmp_path / "worker.log"
    worker = WorkerProcess(settings, log_path, extra_env=CRASH_IN_BATCH).start()
    try:
        assert await exited(worker, timeout=120) != 0
        crashed = re.search(r"crash in batch (\d+)\.\.(\d+) of partition (\d+)", worker.log_text())
        assert crashed, worker.log_tail(60)
        first, last, partition = crashed.groups()
        assert int(first) < int(last)

        worker = WorkerProcess(settings, log_path).start()
        await converge(broker.bootstrap, settings.output_topic, expected_records(raw), 240)
        worker.assert_running()
    finally:
        worker.stop()
    completed = f"completed batch {first}..{last} of partition {partition} after a restart"
    assert completed in worker.log_text(), worker.log_tail(60)
