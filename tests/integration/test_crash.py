"""Crash at any point: SIGKILL the worker at random moments while it processes a stream,
restart it each time; once the stream is drained the output equals the batch result."""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets

import pytest

from stream import local_state
from stream.broker import create_topics, standard_topics
from tests.integration.kafka_io import (
    WorkerProcess,
    converge,
    expected_records,
    produce,
    produce_paced,
    reliability_settings,
    sample_sum,
    simulated,
)

KILLS = 6
RATE = 180  # events/s: input keeps arriving through all the kills


async def processing(worker: WorkerProcess, producing: asyncio.Future, timeout: float = 90) -> None:
    """Wait until this run of the worker has read input (so a kill lands mid-stream), or
    until there is nothing left to read."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        worker.assert_running()
        with contextlib.suppress(OSError):
            if sample_sum(worker.scrape(), "churn_consumed_messages_total") > 0:
                return
        if producing.done():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the worker read nothing in {timeout}s")


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
async def test_sigkill_at_random_moments_loses_and_doubles_nothing(
    broker, topic_prefix, tmp_path, store
):
    seed = secrets.randbits(32)
    rng = random.Random(seed)
    settings = reliability_settings(topic_prefix, broker.url, tmp_path, store=store)
    await create_topics(broker.bootstrap, standard_topics(settings))
    raw = simulated(customers=450, days=160, seed=seed % 1000)  # ~20,000 events
    expected = expected_records(raw)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    producing = asyncio.ensure_future(
        produce_paced(broker.bootstrap, settings.input_topic, raw, per_second=RATE)
    )
    moments = []
    try:
        await worker.wait_for_metrics(timeout=90)
        for kill in range(KILLS):
            if kill == 1:  # anywhere, from start-up and recovery to deep in a batch
                moment = rng.uniform(0.0, 15.0)
            else:  # mid-stream: shortly after this run started reading its backlog
                await processing(worker, producing)
                moment = rng.uniform(0.0, 3.0)
            moments.append(round(moment, 2))
            await asyncio.sleep(moment)
            worker.assert_running()
            worker.kill()
            worker.start()
            await worker.wait_for_metrics(timeout=90)
        await producing
        await converge(broker.bootstrap, settings.output_topic, expected, timeout=240)
        metrics = worker.scrape()
        worker.assert_running()
    except BaseException as error:
        raise AssertionError(
            f"seed {seed}, kills after {moments}s: {error}\n{worker.log_tail(60)}"
        ) from error
    finally:
        producing.cancel()
        with contextlib.suppress(BaseException):
            await producing
        worker.stop()
    log = worker.log_text()
    print(
        f"seed {seed}: killed after {moments}s; last run: "
        f"redone {sample_sum(metrics, 'churn_redone_messages_total'):.0f}, "
        f"refetched {sample_sum(metrics, 'churn_refetched_messages_total'):.0f}, "
        f"redelivered {sample_sum(metrics, 'churn_redelivered_messages_total'):.0f}; "
        f"whole log: {log.count('completed batch')} batches completed after restarts, "
        f"{log.count('consumer skipped')} consumer skips read back, "
        f"{log.count('was cut off')} segment flushes cut off, "
        f"{log.count('discarding the local tables')} local table discards"
    )
    if store == "rocksdb://":  # restarts after kills restored their tables from changelogs
        assert "discarding the local tables" in log


@pytest.mark.parametrize("producer_max_batch_size", [1, 16384])
async def test_local_tables_are_kept_after_a_clean_stop_and_restored_after_a_kill(
    broker, topic_prefix, tmp_path, producer_max_batch_size
):
    """RocksDB may hold writes the changelog never received when the worker dies: a start
    after a kill restores the tables from the changelog, a start after SIGTERM keeps them.
    With multi-record producer batches too, whose end offsets the embedded broker
    under-reports (the restores read up to the last record anyway)."""
    settings = reliability_settings(
        topic_prefix,
        broker.url,
        tmp_path,
        store="rocksdb://",
        producer_max_batch_size=producer_max_batch_size,
    )
    await create_topics(broker.bootstrap, standard_topics(settings))
    raw = simulated(customers=120, days=90, seed=11)
    parts = [raw[: len(raw) // 3], raw[len(raw) // 3 : 2 * len(raw) // 3], raw[2 * len(raw) // 3 :]]
    marker = local_state.marker(settings.data_dir)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        await produce(broker.bootstrap, settings.input_topic, parts[0])
        await converge(broker.bootstrap, settings.output_topic, expected_records(parts[0]), 180)
        assert worker.stop() == 0
        assert marker.exists(), worker.log_tail()

        worker.start()
        await produce(broker.bootstrap, settings.input_topic, parts[1])
        await converge(
            broker.bootstrap, settings.output_topic, expected_records(parts[0] + parts[1]), 180
        )
        assert not marker.exists(), "a start consumes the marker"
        worker.kill()

        worker.start()
        await produce(broker.bootstrap, settings.input_topic, parts[2])
        await converge(broker.bootstrap, settings.output_topic, expected_records(raw), 180)
        worker.assert_running()
    finally:
        worker.stop()
    log = worker.log_text()
    starts = log.split("===== start ")
    assert "keeping the local tables" in starts[2], starts[2][-3000:]
    assert "discarding the local tables" in starts[3], starts[3][-3000:]
    # every table came back in bulk, before faust's recovery looked at it
    for table in ("customers", "aggregate-entries", "aggregate-meta", "aggregate-emitted"):
        assert f"{table}: restored" in starts[3], starts[3][-3000:]
