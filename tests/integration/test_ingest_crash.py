"""A crashed ingest task stops the whole worker: non-zero exit, /metrics port released, and
the input offsets of the failed batch are not committed (a restart reads it again).

The failure injected: a dead-letter topic the broker refuses to write (an invalid topic
name — on a real cluster the same happens with a missing topic and auto-creation off, or
a missing WRITE ACL). The first invalid input makes the dead-letter send fail after the
producer's request timeout. Afterwards a worker with a writable dead-letter topic reads
the same message again: the failed batch was not committed."""

from __future__ import annotations

import asyncio
import socket
import time

import orjson

from stream.broker import create_topics, standard_topics
from tests.integration.kafka_io import WorkerProcess, produce, read_all, reliability_settings


def port_is_free(host: str, port: int) -> bool:
    """A new worker could listen there (as aiohttp does: SO_REUSEADDR, so the TIME_WAIT
    left by the test's scrapes does not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


async def test_a_crashed_ingest_stops_the_worker_and_frees_its_port(broker, topic_prefix, tmp_path):
    settings = reliability_settings(topic_prefix, broker.url, tmp_path, dlq_topic="bad topic!")
    topics = [spec for spec in standard_topics(settings) if spec.name != settings.dlq_topic]
    await create_topics(broker.bootstrap, topics)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        await worker.wait_for_metrics()
        # wait until the ingest stage runs (its consumer joined its group)
        deadline = time.monotonic() + 60
        while "ingest assigned" not in worker.log_text() and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        await produce(broker.bootstrap, settings.input_topic, [b"not json"])
        began = time.monotonic()
        code = await asyncio.to_thread(worker.wait, 180)
        stopped_after = time.monotonic() - began
    finally:
        worker.stop()
    log = worker.log_text()
    assert code != 0, log[-3000:]
    assert "ingest stopped; stopping the worker" in log
    assert port_is_free(settings.metrics_host, settings.metrics_port)
    print(f"worker exited with {code} {stopped_after:.0f}s after the bad dead letter")

    # Nothing was committed for the failed batch: a worker with a writable dead-letter
    # topic reads the message again and dead-letters it.
    fixed = settings.model_copy(update={"dlq_topic": f"{topic_prefix}dlq"})
    await create_topics(broker.bootstrap, standard_topics(fixed))
    again = WorkerProcess(fixed, tmp_path / "worker-again.log").start()
    try:
        await again.wait_for_metrics()
        dead = []
        deadline = time.monotonic() + 120
        while not dead and time.monotonic() < deadline:
            dead = await read_all(broker.bootstrap, fixed.dlq_topic, idle_seconds=1)
        again.assert_running()
    finally:
        again.stop()
    assert [orjson.loads(m.value)["original"] for m in dead] == ["not json"]
