"""`exact_end_offsets` against the embedded broker, whose reported end offsets are the last
batch's base offset + 1 (stream/end_offsets.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.types import TP

from stream.app import create_app
from stream.broker import EmbeddedBroker, TopicSpec, create_topics
from stream.end_offsets import exact_end_offsets
from stream.settings import Settings

# Per partition: the sizes of the record batches produced to it, in order.
LAYOUTS = [
    pytest.param([[]], id="empty"),
    pytest.param([[1]], id="one-record"),
    pytest.param([[10]], id="one-batch-of-ten"),
    pytest.param([[4, 1]], id="ending-alone"),
    pytest.param([[3, 5]], id="ending-with-five"),
    pytest.param([[7], [], [2, 2, 6]], id="three-partitions"),
]


async def _produce(bootstrap: str, topic: str, layout: list[list[int]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for partition, sizes in enumerate(layout):
            for size in sizes:
                batch = producer.create_batch()
                for number in range(size):
                    batch.append(key=b"k%d" % number, value=b"v", timestamp=None)
                await (await producer.send_batch(batch, topic, partition=partition))
    finally:
        await producer.stop()


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_the_end_is_one_past_the_last_record_whatever_the_batches(
    broker: EmbeddedBroker, topic_prefix: str, layout: list[list[int]]
) -> None:
    topic = f"{topic_prefix}ends"
    await create_topics(broker.bootstrap, [TopicSpec(topic, len(layout))])
    await _produce(broker.bootstrap, topic, layout)
    partitions = [TopicPartition(topic, partition) for partition in range(len(layout))]
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await asyncio.wait_for(exact_end_offsets(consumer, partitions, timeout=10), 30)
    finally:
        await consumer.stop()
    assert ends == {tp: sum(sizes) for tp, sizes in zip(partitions, layout, strict=True)}


async def test_faust_recovery_asks_the_worker_consumer_which_reads_the_ends(
    broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path
) -> None:
    """faust's recovery reads changelogs up to `Consumer.highwaters` (stream/faust_consumer.py)."""
    topic = f"{topic_prefix}changelog"
    await create_topics(broker.bootstrap, [TopicSpec(topic, 2)])
    await _produce(broker.bootstrap, topic, [[3, 5], [6]])
    app = create_app(Settings(broker=broker.url, data_dir=tmp_path / "data")).app
    ends = await asyncio.wait_for(app.consumer.highwaters(TP(topic, 0), TP(topic, 1)), 30)
    assert ends == {TP(topic, 0): 8, TP(topic, 1): 6}
