"""faust tables as the stages use them: acknowledged writes, and bulk writes of raw bytes.

`DurableTable` is a faust table whose changelog writes can be awaited, and whose active
partitions are restored in bulk with RocksDB (`restore`, below) once it is `attach`ed.

`BulkTable` holds raw bytes keys and values and is written in bulk: `stage` collects
writes, `flush` puts them into the store with one write per partition and sends the
changelog records in producer batches of our own aiokafka producer, then records the
changelog offset the store holds (what faust's recovery resumes from). faust's per-key
write path (a future, a callback and a persisted-offset write per key) costs ~20 µs a key;
this costs ~2 µs. The changelog records are exactly those faust would have written for a
table of raw keys and values, so standby replicas and the memory store's recovery stay
faust's.

With RocksDB the active partitions of both are restored by `restore` before faust's
recovery looks at them: faust applies changelog records one message at a time (~4,600
records/s on the embedded broker), `restore` one fetch of many records at a time. faust's
RocksDB store keeps a changelog record's key and value bytes as they are, so `restore`
writes them as they are too, whatever the table's serializers.

What this relies on in faust-streaming 0.15.3 (pinned by tests/integration/test_tables.py,
exercised by the crash and rebalance tests): the memory store keeps its items in
`Store.data` and the partition of each key in `Store._key_partition`; the RocksDB store
opens one database per partition (`Store._db_for_partition`) and keeps raw bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, Final

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.types import TP

from stream.end_offsets import exact_end_offsets
from stream.rocksdb_memory import RocksDBMemory

# Records per changelog producer batch stay under the broker's default message limit.
BULK_BATCH_BYTES: Final = 512 * 1024
# Unawaited changelog writes are forgotten once acknowledged (checked every this many).
_PRUNE_AT: Final = 4096
# A restore reads the changelog in fetches of up to this many bytes per partition.
RESTORE_FETCH_BYTES: Final = 8 * 1024 * 1024
# A restore that gets no record for this long leaves the rest to faust's recovery.
RESTORE_STALL_SECONDS: Final = 30.0

log = logging.getLogger(__name__)


class LazyProducer:
    """An aiokafka producer started on first use (the tables are written only once the
    broker is reachable) and stopped with the worker."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> AIOKafkaProducer:
        if self._producer is None:
            async with self._lock:
                if self._producer is None:
                    producer = AIOKafkaProducer(
                        linger_ms=0, max_batch_size=BULK_BATCH_BYTES, **self._options
                    )
                    await producer.start()
                    self._producer = producer
        return self._producer

    @property
    def options(self) -> dict[str, Any]:
        """The connection options (also those of the restoring consumer)."""
        return self._options

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


class DurableTable(faust.Table):  # type: ignore[misc]
    """A faust table whose changelog writes can be awaited (`acknowledged`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unacknowledged: list[Any] = []
        self._prune_at = _PRUNE_AT
        self._lost_writes = False
        self._producer: LazyProducer | None = None
        self._rocksdb_memory: RocksDBMemory | None = None

    def share_rocksdb_memory(self, memory: RocksDBMemory) -> None:
        """Open this table's RocksDB databases within the worker's one memory budget
        (before the table starts: the store is created then)."""
        assert self._data is None, "the store was created already"
        self._rocksdb_memory = memory

    def _new_store(self) -> Any:
        store: Any = super()._new_store()
        options = getattr(store, "rocksdb_options", None)
        if self._rocksdb_memory is not None and options is not None:
            store.rocksdb_options = self._rocksdb_memory.options_like(options)
        return store

    def attach(self, producer: LazyProducer) -> None:
        """The producer whose connection options the restore uses (and which sends a
        `BulkTable`'s changelog)."""
        self._producer = producer

    @property
    def _stored(self) -> Any:
        """The store, whose RocksDB and memory internals faust's `StoreT` does not type."""
        return self.data

    def _memory(self) -> dict[bytes, bytes] | None:
        data = getattr(self.data, "data", None)
        return data if isinstance(data, dict) else None

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        future = super().send_changelog(*args, **kwargs)
        if len(self._unacknowledged) >= self._prune_at:
            self._prune()
        self._unacknowledged.append(future)
        return future

    def _prune(self) -> None:
        """Forget the acknowledged writes (remembering whether any failed)."""
        pending = []
        for future in self._unacknowledged:
            if not future.done():
                pending.append(future)
            elif not _succeeded(future):
                self._lost_writes = True
        self._unacknowledged = pending
        self._prune_at = max(_PRUNE_AT, 2 * len(pending))

    async def backpressure(self, limit: int) -> None:
        """Wait for the broker while more than `limit` changelog writes are unacknowledged
        (a stage that does not wait per message must not outrun the producer)."""
        if len(self._unacknowledged) > limit:
            self._prune()
            if len(self._unacknowledged) > limit:
                await self.acknowledged()

    async def acknowledged(self) -> None:
        """Wait until every changelog write made so far is acknowledged by the broker."""
        for future in list(self._unacknowledged):
            await future
        self._prune()  # kept until then: a stop cancelling the wait leaves them visible

    def all_acknowledged(self) -> bool:
        """Whether the changelog holds every write made to the local store (checked once
        the worker stopped: then the local store may be kept, see stream/local_state.py)."""
        self._prune()
        return not self._lost_writes and not self._unacknowledged

    # -- restoring -----------------------------------------------------------------------
    async def on_rebalance(
        self,
        assigned: set[TP],
        revoked: set[TP],
        newly_assigned: set[TP],
        generation_id: int = 0,
    ) -> None:
        """faust calls this before its recovery reads the stores' persisted offsets, so a
        partition restored here is one faust finds up to date."""
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        if self._memory() is not None or self._producer is None:
            return  # the memory store persists no offsets: faust's recovery reads it all
        if generation_id != self.app.consumer_generation_id:
            return  # a stale rebalance (faust's recovery ignores it too)
        topic = self.changelog_topic_name
        actives = self.app.assignor.assigned_actives()
        await self.restore(sorted(tp.partition for tp in actives if tp.topic == topic))

    async def restore(self, partitions: list[int]) -> int:
        """Apply the changelog records after each partition's persisted offset, up to its
        last record (`exact_end_offsets`, as faust's recovery does); the records applied."""
        if not partitions:
            return 0
        assert self._producer is not None, "attach() was not called"
        consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            fetch_max_bytes=RESTORE_FETCH_BYTES,
            max_partition_fetch_bytes=RESTORE_FETCH_BYTES,
            **self._producer.options,
        )
        await consumer.start()
        try:
            started = time.monotonic()
            ranges = await self._unrestored(consumer, partitions)
            applied = await self._apply_changelog(consumer, ranges)
        finally:
            await consumer.stop()
        if applied:
            log.info(
                "%s: restored %d changelog records of partitions %s in %.1fs",
                self.name,
                applied,
                partitions,
                time.monotonic() - started,
            )
        return applied

    async def _unrestored(
        self, consumer: AIOKafkaConsumer, partitions: list[int]
    ) -> dict[TopicPartition, tuple[int, int]]:
        """Per changelog partition, the [first, end) offsets the store does not hold yet."""
        topic = self.changelog_topic_name
        tps = [TopicPartition(topic, partition) for partition in partitions]
        ends = await exact_end_offsets(consumer, tps)
        beginnings = await consumer.beginning_offsets(tps)
        ranges = {}
        for tp in tps:
            persisted = self.data.persisted_offset(TP(topic, tp.partition))
            first = max(beginnings[tp], -1 if persisted is None else persisted + 1)
            if first < ends[tp]:
                ranges[tp] = (first, ends[tp])
        return ranges

    async def _apply_changelog(
        self, consumer: AIOKafkaConsumer, ranges: dict[TopicPartition, tuple[int, int]]
    ) -> int:
        if not ranges:
            # (aiokafka 0.14: assigning no partitions while a fetch is in flight makes
            # `stop` hang; exact_end_offsets leaves one in flight)
            return 0
        consumer.assign(list(ranges))
        for tp, (first, _) in ranges.items():
            consumer.seek(tp, first)
        applied, last_progress = 0, time.monotonic()
        while ranges:
            fetched = await consumer.getmany(*ranges, timeout_ms=1000)
            for tp, messages in fetched.items():
                applied += self._apply_records(tp, messages, ranges[tp][1])
                last_progress = time.monotonic()
                if await consumer.position(tp) >= ranges[tp][1]:
                    del ranges[tp]
            if ranges and time.monotonic() - last_progress > RESTORE_STALL_SECONDS:
                log.warning("%s: restore stalled; faust's recovery reads the rest", self.name)
                break
        return applied

    def _apply_records(self, tp: TopicPartition, messages: list[Any], end: int) -> int:
        """Write the records below `end` in one batch, then the offset they reach."""
        from rocksdict import WriteBatch  # only with the RocksDB store

        batch, count = WriteBatch(raw_mode=True), 0
        for message in messages:
            if message.offset >= end:
                break
            if message.value is None:
                batch.delete(message.key)
            else:
                batch.put(message.key, message.value)
            count += 1
        if count:
            self._stored._db_for_partition(tp.partition).write(batch)
            self.data.set_persisted_offset(TP(tp.topic, tp.partition), messages[count - 1].offset)
        return count


def _succeeded(future: Any) -> bool:
    return bool(future.done() and not future.cancelled() and future.exception() is None)


class BulkTable(DurableTable):
    """A faust table of raw bytes, read and written per partition, written in bulk."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._staged: dict[int, dict[bytes, bytes]] = {}
        self._in_flight: list[tuple[int, Any, int]] = []  # (partition, ack, records)
        # Set while a write is in the store but its changelog records not all handed to
        # the producer (a stop that cancels it there leaves the store ahead).
        self._writing = False

    # -- reading -------------------------------------------------------------------------
    def read(self, partition: int, key: bytes) -> bytes | None:
        staged = self._staged.get(partition)
        if staged is not None and key in staged:
            return staged[key]
        memory = self._memory()
        if memory is not None:
            return memory.get(key)
        value: bytes | None = self._stored._db_for_partition(partition).get(key)
        return value

    def read_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        """`read` of each key, those in the store in one (multi-get) call."""
        memory = self._memory()
        if memory is not None:
            values = [memory.get(key) for key in keys]
        else:
            values = self._stored._db_for_partition(partition).get(keys)
        staged = self._staged.get(partition)
        if staged:
            values = [staged.get(key, value) for key, value in zip(keys, values, strict=True)]
        return values

    def raw_items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every stored item of the partitions this worker holds."""
        memory = self._memory()
        if memory is not None:
            yield from list(memory.items())
            return
        for db in list(self._stored._dbs.values()):
            for key, value in db.items():
                if key != self._stored.offset_key:
                    yield key, value

    # -- writing -------------------------------------------------------------------------
    def stage(self, partition: int, key: bytes, value: bytes) -> None:
        self._staged.setdefault(partition, {})[key] = value

    async def flush(self) -> None:
        """Write everything staged and wait until the broker acknowledged it all."""
        await self.send()
        await self.settled()

    async def send(self) -> None:
        """Write everything staged to the store and hand its changelog records to the
        producer, without waiting for the broker (see `settled`)."""
        staged, self._staged = self._staged, {}
        for partition, items in staged.items():
            if items:
                self._writing = True
                self._write_store(partition, items)
                self._in_flight.extend(await self._send_changelog_batches(partition, items))
                self._writing = False

    async def settled(self) -> None:
        """Wait until every changelog record sent so far is acknowledged, then record the
        changelog offsets the store holds."""
        in_flight = list(self._in_flight)
        last: dict[int, int] = {}
        for partition, future, count in in_flight:
            metadata = await future
            last[partition] = max(last.get(partition, -1), metadata.offset + count - 1)
        self._in_flight = self._in_flight[len(in_flight) :]
        topic = self.changelog_topic_name
        for partition, offset in last.items():
            self.data.set_persisted_offset(TP(topic, partition), offset)

    def all_acknowledged(self) -> bool:
        return (
            super().all_acknowledged()
            and not self._writing
            and all(_succeeded(future) for _, future, _ in self._in_flight)
        )

    def _write_store(self, partition: int, items: dict[bytes, bytes]) -> None:
        memory = self._memory()
        if memory is not None:
            memory.update(items)
            partitions = self._stored._key_partition
            for key in items:
                partitions[key] = partition
            return
        from rocksdict import WriteBatch  # only with the RocksDB store

        batch = WriteBatch(raw_mode=True)
        for key, value in items.items():
            batch.put(key, value)
        self._stored._db_for_partition(partition).write(batch)

    async def _send_changelog_batches(
        self, partition: int, items: dict[bytes, bytes]
    ) -> list[tuple[int, Any, int]]:
        """Send the records in producer batches, the last one alone in its own batch.

        Why alone: the embedded broker reports a partition's end offset as the first
        offset of its last batch + 1 (README, Guarantees). Restores read to the last record
        whatever the batches (`exact_end_offsets`); ending every write with a one-record
        batch keeps the reported end exact too, for whatever else reads it (lag tools); on
        Kafka it costs one small request."""
        assert self._producer is not None, "BulkTable.attach() was not called"
        producer = await self._producer.get()
        topic = self.changelog_topic_name
        records = list(items.items())
        sent = []
        batch, count = producer.create_batch(), 0
        for position, (key, value) in enumerate(records):
            last = position == len(records) - 1 and count > 0
            if last or batch.append(key=key, value=value, timestamp=None) is None:
                future = await producer.send_batch(batch, topic, partition=partition)
                sent.append((partition, future, count))
                batch, count = producer.create_batch(), 0
                batch.append(key=key, value=value, timestamp=None)
            count += 1
        future = await producer.send_batch(batch, topic, partition=partition)
        sent.append((partition, future, count))
        return sent


class PartitionStore(MutableMapping[str, bytes]):
    """One partition of a `BulkTable` as a stage sees it: str keys, and writes held until
    `commit` (so that a customer's new history is written only after the differences it
    caused were acknowledged). `partition` is set before each message is applied."""

    def __init__(self, table: BulkTable, hidden: Callable[[str], bool]) -> None:
        self._table = table
        self._hidden = hidden
        self._pending: dict[str, bytes] = {}
        self.partition = 0

    def select(self, partition: int) -> None:
        assert not self._pending, "uncommitted writes of another partition"
        self.partition = partition

    def get(self, key: str, default: Any = None) -> Any:
        value = self._pending.get(key)
        if value is None:
            value = self._table.read(self.partition, key.encode())
        return default if value is None else value

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """`get` of each key (None where absent), the store read in one call."""
        values = self._table.read_many(self.partition, [key.encode() for key in keys])
        if self._pending:
            held = self._pending
            values = [held.get(key, value) for key, value in zip(keys, values, strict=True)]
        return values

    def __getitem__(self, key: str) -> bytes:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value  # type: ignore[no-any-return]

    def __setitem__(self, key: str, value: bytes) -> None:
        self._pending[key] = value

    def __delitem__(self, key: str) -> None:
        raise NotImplementedError("histories are never deleted")

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self.every_item())

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def every_item(self) -> Iterator[tuple[str, bytes]]:
        """The items of every partition this worker holds (not only the selected one)."""
        for raw, value in self._table.raw_items():
            key = raw.decode()
            if not self._hidden(key):
                yield key, value

    def commit(self) -> None:
        """Stage the held writes in the table (written by its next `flush`)."""
        for key, value in self._pending.items():
            self._table.stage(self.partition, key.encode(), value)
        self._pending.clear()

    def discard(self) -> None:
        self._pending.clear()
