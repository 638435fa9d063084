"""The embedded Tansu broker speaks enough Kafka for the worker: topics, produce, fetch, groups."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from stream.broker import EmbeddedBroker, TopicSpec, create_topics, standard_topics
from stream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
GROUP_OPTIONS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


async def _consume(consumer: AIOKafkaConsumer, count: int, timeout: float = 15.0) -> list:
    """Exactly `count` records (end offsets are unreliable on Tansu, so count instead)."""
    records: list = []
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=200)
        for batch in batches.values():
            records.extend(batch)
    return records


async def _partition_count(bootstrap: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert described["error_code"] == 0, described
    return len(described["partitions"])


async def test_produce_consume_round_trip(broker: EmbeddedBroker, topic_prefix: str) -> None:
    topic = f"{topic_prefix}round-trip"
    await create_topics(broker.bootstrap, [TopicSpec(topic, 3)])
    sent = [(f"customer-{i % 5}".encode(), f'{{"n": {i}, "s": "é"}}'.encode()) for i in range(30)]

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
    await producer.start()
    try:
        for key, value in sent:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        received = await _consume(consumer, len(sent))
    finally:
        await consumer.stop()

    assert sorted((r.key, r.value) for r in received) == sorted(sent)
    for key in {k for k, _ in sent}:  # per key (= per partition) order is kept
        assert [r.value for r in received if r.key == key] == [v for k, v in sent if k == key]


async def test_topic_has_requested_partitions(broker: EmbeddedBroker, topic_prefix: str) -> None:
    specs = [TopicSpec(f"{topic_prefix}p{n}", n) for n in (1, 2, 7)]
    await create_topics(broker.bootstrap, specs)
    await create_topics(broker.bootstrap, specs)  # idempotent

    for spec in specs:
        assert await _partition_count(broker.bootstrap, spec.name) == spec.partitions


async def test_standard_topics_are_created(broker: EmbeddedBroker, topic_prefix: str) -> None:
    settings = Settings(
        app_id=f"{topic_prefix}app",
        input_topic=f"{topic_prefix}in",
        output_topic=f"{topic_prefix}out",
        dlq_topic=f"{topic_prefix}dlq",
        alert_topic=f"{topic_prefix}alerts",
        partitions=3,
    )
    specs = standard_topics(settings)
    assert {s.name for s in specs} == {
        settings.input_topic,
        settings.output_topic,
        settings.dlq_topic,
        settings.alert_topic,
        settings.customer_topic,
        settings.delta_topic,
    }

    await create_topics(broker.bootstrap, specs)  # includes cleanup.policy=compact

    for spec in specs:
        assert await _partition_count(broker.bootstrap, spec.name) == 3


async def test_committed_offset_survives_consumer_restart(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    topic, group = f"{topic_prefix}offsets", f"{topic_prefix}group"
    partition = TopicPartition(topic, 0)
    await create_topics(broker.bootstrap, [TopicSpec(topic, 1)])
    await _produce(broker.bootstrap, topic, [b"a", b"b", b"c"])

    first = await _group_consumer(broker.bootstrap, topic, group)
    try:
        assert [r.value for r in await _consume(first, 3)] == [b"a", b"b", b"c"]
        await first.commit()
    finally:
        await first.stop()

    await _produce(broker.bootstrap, topic, [b"d", b"e"])
    second = await _group_consumer(broker.bootstrap, topic, group)
    try:
        assert await second.committed(partition) == 3
        assert [r.value for r in await _consume(second, 2)] == [b"d", b"e"]
        assert await _consume(second, 1, timeout=1.0) == []  # nothing re-delivered
    finally:
        await second.stop()


async def test_pause_freezes_then_resume_continues(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}pause"
    await create_topics(broker.bootstrap, [TopicSpec(topic, 1)])
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"before")
        broker.pause()
        try:
            during = asyncio.ensure_future(producer.send_and_wait(topic, b"during"))
            await asyncio.sleep(1.0)
            assert not during.done(), "a paused broker must not answer"
        finally:
            broker.resume()
        await asyncio.wait_for(during, 15)
        await producer.send_and_wait(topic, b"after")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        assert [r.value for r in await _consume(consumer, 3)] == [b"before", b"during", b"after"]
    finally:
        await consumer.stop()


async def test_tansu_end_offsets_under_report_batches(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    """Canary for a known Tansu 0.6.0 bug: end offset = last batch base offset + 1.

    When this fails after a Tansu upgrade, the bug is fixed and lag/progress code may
    trust end_offsets again.
    """
    topic = f"{topic_prefix}end-offsets"
    partition = TopicPartition(topic, 0)
    await create_topics(broker.bootstrap, [TopicSpec(topic, 1)])
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=100)
    await producer.start()
    try:
        batch = producer.create_batch()
        for i in range(10):
            batch.append(key=None, value=f"v{i}".encode(), timestamp=None)
        batch.close()
        await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
    await consumer.start()
    try:
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        assert len(await _consume(consumer, 10)) == 10
        assert (await consumer.end_offsets([partition]))[partition] == 1  # should be 10
    finally:
        await consumer.stop()


async def test_broker_command_serves_until_sigint(topic_prefix: str) -> None:
    command = [sys.executable, "-m", "stream.broker", "--input-topic", f"{topic_prefix}events"]
    command += ["--partitions", "2"]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("CHURN_")},
    )
    try:
        url = _first_line(process, timeout=30.0)
        assert url.startswith("kafka://127.0.0.1:"), url
        bootstrap = url.removeprefix("kafka://")
        topic = f"{topic_prefix}events"
        assert await _partition_count(bootstrap, topic) == 2
        await _produce(bootstrap, topic, [b"hello"])
        assert await _partition_count(bootstrap, "churn-stream-customer-batches") == 2

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0, process.stderr.read() if process.stderr else ""
        assert process.stdout is not None and process.stdout.read() == ""  # exactly one line
        assert not _accepts(bootstrap), "the broker must be gone after the command exits"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- helpers


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def _group_consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **GROUP_OPTIONS,
    )
    await consumer.start()
    return consumer


def _first_line(process: subprocess.Popen[str], timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no URL within {timeout}s") from None
    if not line:
        stderr = process.stderr.read() if process.stderr else ""
        raise AssertionError(f"broker command exited with {process.wait()}: {stderr}")
    return line.strip()


def _accepts(bootstrap: str) -> bool:
    host, port = bootstrap.split(":")
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, int(port))) == 0
