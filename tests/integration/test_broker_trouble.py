"""Broker trouble: a broker frozen for 30 s mid-stream, a broker unreachable at start-up
(the worker waits with backoff, then gives up with a non-zero exit after the deadline),
and a broker that comes up while the worker waits. Each test has its own broker."""

from __future__ import annotations

import asyncio
import re
import time

from stream.broker import EmbeddedBroker, create_topics, free_port, standard_topics
from tests.integration.kafka_io import (
    WorkerProcess,
    converge,
    expected_records,
    produce,
    reliability_settings,
    sample_sum,
    sample_value,
    simulated,
)

FREEZE_SECONDS = 30


async def test_frozen_broker_stalls_the_worker_which_then_catches_up_exactly(tmp_path):
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        settings = reliability_settings("freeze-", broker.url, tmp_path)
        await create_topics(broker.bootstrap, standard_topics(settings))
        raw = simulated(customers=300, days=90, seed=41)
        half = len(raw) // 2
        worker = WorkerProcess(settings, tmp_path / "worker.log").start()
        samples: list[dict[str, float | None]] = []
        try:
            await worker.wait_for_metrics()
            await produce(broker.bootstrap, settings.input_topic, raw[:half])
            await converge(
                broker.bootstrap, settings.output_topic, expected_records(raw[:half]), 120
            )
            pid = worker.pid
            await produce(broker.bootstrap, settings.input_topic, raw[half:])
            broker.pause()  # mid-stream: the second half is still being processed
            frozen_at = time.monotonic()
            while time.monotonic() - frozen_at < FREEZE_SECONDS:
                await asyncio.sleep(1)
                text = await asyncio.wait_for(asyncio.to_thread(worker.scrape), timeout=5)
                samples.append(_health(text))
            broker.resume()
            await converge(broker.bootstrap, settings.output_topic, expected_records(raw), 240)
            recovered = _health(worker.scrape())
            deadline = time.monotonic() + 60
            while recovered["up"] != 1 and time.monotonic() < deadline:
                await asyncio.sleep(1)
                recovered = _health(worker.scrape())
            worker.assert_running()
            assert worker.pid == pid, "the worker was restarted"
            log = worker.log_text()
        finally:
            worker.stop()

    print("freeze samples:", [(round(s["now"] - samples[0]["now"], 1), s["up"]) for s in samples])
    # every scrape answered within 5 s (asyncio.wait_for above), all through the freeze
    assert len(samples) >= FREEZE_SECONDS // 2, samples
    assert any(s["up"] == 0 for s in samples), f"churn_ingest_up never showed the stall {samples}"
    assert samples[0]["up"] == 1
    last = samples[-1]
    assert last["last_event"] is not None and last["now"] - last["last_event"] >= 15, last
    assert recovered["up"] == 1
    assert recovered["consumed"] >= len(raw)
    assert "Crashed" not in log and "===== start 2" not in log


def _health(text: str) -> dict[str, float | None]:
    return {
        "now": time.time(),
        "up": sample_value(text, "churn_ingest_up"),
        "last_event": sample_value(text, "churn_last_event_timestamp_seconds"),
        "lag": sample_sum(text, "churn_consumer_lag_messages"),
        "consumed": sample_sum(text, "churn_consumed_messages_total"),
    }


def test_unreachable_broker_at_startup_retries_then_exits_nonzero(tmp_path):
    port = free_port()  # nothing listens there
    settings = reliability_settings(
        "unreachable-", f"kafka://127.0.0.1:{port}", tmp_path, startup_timeout_seconds=12
    )
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    began = time.monotonic()
    try:
        time.sleep(8)
        assert worker.running(), f"gave up before the deadline:\n{worker.log_tail()}"
        code = worker.wait(timeout=60)
    finally:
        worker.stop()
    elapsed = time.monotonic() - began
    log = worker.log_text()
    assert code == 2, log[-3000:]
    assert 12 <= elapsed <= 12 + 25, elapsed
    retries = re.findall(rf"kafka unreachable at 127\.0\.0\.1:{port} \(attempt (\d+)", log)
    assert len(retries) >= 3, log[-3000:]
    delays = [float(d) for d in re.findall(r"retrying in ([\d.]+)s", log)]
    assert delays[:3] == [0.5, 1.0, 2.0], delays  # exponential backoff
    assert "giving up" in log and "CHURN_STARTUP_TIMEOUT_SECONDS" in log
    assert "Traceback" not in log


async def test_worker_waits_for_a_broker_that_comes_up_later(tmp_path):
    port = free_port()
    settings = reliability_settings(
        "late-", f"kafka://127.0.0.1:{port}", tmp_path, startup_timeout_seconds=120
    )
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        await asyncio.sleep(6)
        worker.assert_running()
        assert "kafka unreachable" in worker.log_text()
        with EmbeddedBroker(port=port, log_path=tmp_path / "broker.log") as broker:
            await create_topics(broker.bootstrap, standard_topics(settings))
            raw = simulated(customers=100, days=40, seed=43)
            await produce(broker.bootstrap, settings.input_topic, raw)
            await converge(broker.bootstrap, settings.output_topic, expected_records(raw), 180)
            worker.assert_running()
            assert "kafka reachable at" in worker.log_text()
            worker.stop()
    finally:
        worker.stop()
