"""What `stream.tables.BulkTable` relies on: the embedded broker's end offsets after a write
that ends with a one-record batch, and faust recovering a bulk-written raw table from its
changelog (memory and RocksDB stores)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.types import TP

import stream.tables
from stream.broker import EmbeddedBroker, TopicSpec, create_topics
from stream.tables import BulkTable, DurableTable, LazyProducer, PartitionStore


async def _end_offset(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()


async def _send(producer: AIOKafkaProducer, topic: str, batches: list[int]) -> None:
    """Record batches of the given sizes to partition 0, in order, acknowledged."""
    number = 0
    for size in batches:
        batch = producer.create_batch()
        for _ in range(size):
            batch.append(key=b"k%d" % number, value=b"v", timestamp=None)
            number += 1
        await (await producer.send_batch(batch, topic, partition=0))


async def test_end_offset_is_exact_only_when_the_last_batch_holds_one_record(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    bulk, ending_alone = f"{topic_prefix}bulk", f"{topic_prefix}alone"
    await create_topics(broker.bootstrap, [TopicSpec(bulk, 1), TopicSpec(ending_alone, 1)])
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        await _send(producer, bulk, [5])
        await _send(producer, ending_alone, [4, 1])
    finally:
        await producer.stop()
    # Tansu reports the first offset of the last batch + 1 (the bug BulkTable avoids).
    assert await _end_offset(broker.bootstrap, bulk) == 1
    assert await _end_offset(broker.bootstrap, ending_alone) == 5


def _app(broker: EmbeddedBroker, topic_prefix: str, store: str, data_dir: Path) -> faust.App:
    return faust.App(
        f"{topic_prefix}app",
        broker=broker.url,
        store=store,
        datadir=str(data_dir),
        topic_partitions=2,
        web_enabled=False,
        autodiscover=False,
    )


def _bulk_table(app: faust.App) -> BulkTable:
    table = BulkTable(
        app,
        name="histories",
        default=None,
        beacon=app.tables.beacon,
        partitions=2,
        key_type=bytes,
        value_type=bytes,
    )
    app.tables.add(table)
    return table


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
async def test_a_bulk_written_table_reads_back_and_its_changelog_holds_exactly_the_writes(
    broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path, store: str
) -> None:
    writer_app = _app(broker, topic_prefix, store, tmp_path / "writer")
    table = _bulk_table(writer_app)
    assert table.key_serializer == table.value_serializer == "raw"
    await create_topics(broker.bootstrap, [TopicSpec(table.changelog_topic_name, 2)])
    producer = LazyProducer({"bootstrap_servers": broker.bootstrap})
    table.attach(producer)
    written = {(p, b"customer-%d" % i): b'{"n":%d}' % i for p in (0, 1) for i in range(50)}
    try:
        for (partition, key), value in written.items():
            table.stage(partition, key, value)
        await table.flush()
        assert table.all_acknowledged()
        for (partition, key), value in written.items():
            assert table.read(partition, key) == value
        assert dict(table.raw_items()) == {key: value for (_, key), value in written.items()}
    finally:
        await producer.stop()

    # The changelog, which faust recovery and standby replicas read, holds exactly that.
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        restored = {}
        for partition in (0, 1):
            tp = TopicPartition(table.changelog_topic_name, partition)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            while len([k for k in restored if k[0] == partition]) < 50:
                batches = await asyncio.wait_for(consumer.getmany(tp, timeout_ms=500), 10)
                for message in batches.get(tp, []):
                    restored[(partition, message.key)] = message.value
        end_offsets = await consumer.end_offsets(
            [TopicPartition(table.changelog_topic_name, p) for p in (0, 1)]
        )
    finally:
        await consumer.stop()
    assert restored == written
    assert set(end_offsets.values()) == {50}  # exact, so faust's recovery reads it all


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
async def test_reading_many_keys_at_once_reads_what_reading_each_does(
    broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path, store: str
) -> None:
    table = _bulk_table(_app(broker, topic_prefix, store, tmp_path))
    await create_topics(broker.bootstrap, [TopicSpec(table.changelog_topic_name, 2)])
    producer = LazyProducer({"bootstrap_servers": broker.bootstrap})
    table.attach(producer)
    try:
        for partition, prefix in ((0, b"c"), (1, b"d")):  # a key lives in one partition
            for i in range(5):
                table.stage(partition, b"%s%d" % (prefix, i), b"p%d-written-%d" % (partition, i))
        await table.flush()
        table.stage(0, b"c1", b"staged")  # in the store only at the next flush
        table.stage(0, b"c7", b"staged-new")
        store_view = PartitionStore(table, hidden=lambda key: False)
        store_view.select(0)
        store_view["c2"] = b"held"  # held until commit
        store_view["c8"] = b"held-new"
        keys = ["c0", "c1", "c2", "c7", "c8", "c9", "c4"]
        raw_keys = [key.encode() for key in keys]
        expected = [store_view.get(key) for key in keys]
        assert expected == [
            b"p0-written-0",
            b"staged",
            b"held",
            b"staged-new",
            b"held-new",
            None,
            b"p0-written-4",
        ]
        assert store_view.get_many(keys) == expected
        assert table.read_many(0, raw_keys) == [table.read(0, key) for key in raw_keys]
        assert table.read_many(1, [b"d0", b"d1", b"c9"]) == [b"p1-written-0", b"p1-written-1", None]
        assert table.read_many(1, []) == []
    finally:
        await producer.stop()


async def test_restore_applies_the_changelog_in_order_up_to_its_end_and_then_nothing(
    broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path
) -> None:
    """What a RocksDB worker does at assignment, before faust's recovery: the store ends
    up holding the latest value of every key, with the persisted offset faust resumes from."""
    writer = _bulk_table(_app(broker, topic_prefix, "rocksdb://", tmp_path / "writer"))
    topic = writer.changelog_topic_name
    await create_topics(broker.bootstrap, [TopicSpec(topic, 2)])
    producer = LazyProducer({"bootstrap_servers": broker.bootstrap})
    writer.attach(producer)
    latest: dict[tuple[int, bytes], bytes] = {}
    try:
        for version in range(3):  # each key written three times, the last value wins
            for partition in (0, 1):
                for i in range(2000):
                    key, value = b"customer-%d" % i, b'{"v":%d,"p":%d}' % (version, partition)
                    writer.stage(partition, key, value)
                    latest[(partition, key)] = value
            await writer.flush()
    finally:
        await producer.stop()

    reader = _bulk_table(_app(broker, topic_prefix, "rocksdb://", tmp_path / "reader"))
    reader_producer = LazyProducer({"bootstrap_servers": broker.bootstrap})
    reader.attach(reader_producer)
    try:
        assert await reader.restore([0, 1]) == 2 * 3 * 2000
        for (partition, key), value in latest.items():
            assert reader.read(partition, key) == value
        for partition in (0, 1):
            assert reader.data.persisted_offset(TP(topic, partition)) == 3 * 2000 - 1
        assert await reader.restore([0, 1]) == 0  # up to date: faust's recovery reads nothing
    finally:
        await reader_producer.stop()


async def test_a_table_written_through_faust_is_restored_in_bulk_and_read_back_by_faust(
    broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path
) -> None:
    """The aggregate tables (str keys, JSON values, written key by key through faust's
    changelog path) restore in bulk like the customers table: the changelog records hold
    faust's own encoding of each key and value, which its RocksDB store keeps as they are,
    so faust reads back the latest value of every key."""
    writer_app = _app(broker, topic_prefix, "rocksdb://", tmp_path / "writer")
    writer = _json_table(writer_app)
    topic = writer.changelog_topic_name
    await create_topics(broker.bootstrap, [TopicSpec(topic, 2)])
    serializers = writer_app.serializers
    latest: dict[str, Any] = {}
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=50)
    await producer.start()
    try:
        sent = []
        for version in range(3):  # each key written three times, the last value wins
            for i in range(500):
                key = f"plan=pro|month|2026-{1 + i % 12:02d}|{i}"
                value = {"customers": version * 1000 + i, "mrr": f"{i}.{version:02d}"}
                sent.append(
                    await producer.send(
                        topic,
                        key=serializers.dumps_key(str, key, serializer=writer.key_serializer),
                        value=serializers.dumps_value(
                            None, value, serializer=writer.value_serializer
                        ),
                        partition=i % 2,
                    )
                )
                latest[key] = value
        await producer.flush()
        await asyncio.gather(*sent)  # in multi-record batches: Tansu's end offsets are short
    finally:
        await producer.stop()

    reader = _json_table(_app(broker, topic_prefix, "rocksdb://", tmp_path / "reader"))
    reader_producer = LazyProducer({"bootstrap_servers": broker.bootstrap})
    reader.attach(reader_producer)
    try:
        assert await reader.restore([0, 1]) == 3 * 500
        assert {key: reader[key] for key in latest} == latest
        for partition in (0, 1):
            assert reader.data.persisted_offset(TP(topic, partition)) == 3 * 250 - 1
        assert await reader.restore([0, 1]) == 0  # up to date: faust's recovery reads nothing
    finally:
        await reader_producer.stop()


def _json_table(app: faust.App) -> DurableTable:
    table = DurableTable(
        app, name="aggregates", default=None, beacon=app.tables.beacon, partitions=2, key_type=str
    )
    app.tables.add(table)
    return table


class _UnreachableProducer(LazyProducer):
    """A producer that never becomes available (the broker is away)."""

    def __init__(self) -> None:
        super().__init__({})

    async def get(self) -> Any:
        await asyncio.Event().wait()


async def test_a_write_cut_off_before_its_changelog_was_sent_is_not_acknowledged(
    broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path
) -> None:
    """A stop that cancels a write between the store and the changelog leaves the store
    ahead of its changelog: the worker must not call that a clean stop."""
    table = _bulk_table(_app(broker, topic_prefix, "memory://", tmp_path))
    table.attach(_UnreachableProducer())
    assert table.all_acknowledged()  # nothing written yet
    table.stage(0, b"customer-1", b"{}")
    sending = asyncio.ensure_future(table.send())
    await asyncio.sleep(0.1)
    sending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sending
    assert table.read(0, b"customer-1") == b"{}"  # in the store, not in the changelog
    assert not table.all_acknowledged()


async def test_a_failed_or_pending_changelog_write_is_not_acknowledged(
    broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path
) -> None:
    table = _bulk_table(_app(broker, topic_prefix, "memory://", tmp_path))
    loop = asyncio.get_running_loop()
    pending = loop.create_future()
    table._unacknowledged.append(pending)
    assert not table.all_acknowledged()
    pending.set_result(None)
    assert table.all_acknowledged()
    failed = loop.create_future()
    table._unacknowledged.append(failed)
    failed.set_exception(RuntimeError("broker refused the write"))
    assert not table.all_acknowledged()
    assert not table.all_acknowledged(), "a failed write is never forgotten"


async def test_a_restore_whose_end_cannot_be_reached_stops_and_keeps_what_it_applied(
    broker: EmbeddedBroker,
    topic_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A broker whose reported end offset lies beyond what it serves (offsets a consumer
    never receives) must not hold the worker's start for ever: after
    RESTORE_STALL_SECONDS without progress the restore stops, keeps the records it
    applied and their offset, and leaves the rest to faust's recovery."""
    writer = _bulk_table(_app(broker, topic_prefix, "rocksdb://", tmp_path / "writer"))
    topic = writer.changelog_topic_name
    await create_topics(broker.bootstrap, [TopicSpec(topic, 2)])
    producer = LazyProducer({"bootstrap_servers": broker.bootstrap})
    writer.attach(producer)
    try:
        for i in range(30):
            writer.stage(0, b"customer-%d" % i, b"history-%d" % i)
        await writer.flush()
    finally:
        await producer.stop()

    monkeypatch.setattr(stream.tables, "RESTORE_STALL_SECONDS", 1.0)
    reader = _bulk_table(_app(broker, topic_prefix, "rocksdb://", tmp_path / "reader"))
    reader_producer = LazyProducer({"bootstrap_servers": broker.bootstrap})
    reader.attach(reader_producer)
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="stream.tables"):
            applied = await asyncio.wait_for(
                reader._apply_changelog(consumer, {tp: (0, 30 + 10)}), 60
            )
    finally:
        await consumer.stop()
        await reader_producer.stop()
    assert applied == 30
    assert "restore stalled" in caplog.text
    assert reader.read(0, b"customer-29") == b"history-29"
    assert reader.data.persisted_offset(TP(topic, 0)) == 29
