"""faust wiring: `create_app(settings)` assembles topics, tables, agents and the ingest task.

The agents stay thin: decode a message, call the domain (`CustomerStage`, `Aggregator`),
send the result. Nothing happens at import time.

Exactly-once effect without transactions. faust's own offset commits are only a hint
here: faust acks (and may commit past) messages it skipped during a rebalance or whose
handler raised, and it commits offsets without waiting for the table writes those
messages caused. So each stage keeps its own position, in its own table (same changelog
partition as the state it guards, written after that state):

- customers: the queued customer-batch messages of a partition are applied as one batch
  X (offsets first..last). Before sending its differences, a write-ahead record
  `{first, offset: last, deltas}` is written and acknowledged (after the differences of
  the previous batch are: the record replaces theirs). The histories X changed are written
  after the differences are sent, without waiting: they follow the record in the same
  changelog partition, so the next record's acknowledgement implies theirs. On the first
  message of a partition after a (re)assignment, the recorded X is redone: its events are
  re-applied (by event_id, so whatever part of X's history writes survived is kept, the
  rest written) and the recorded differences are re-sent unchanged, so that the segment
  stage's per-(source partition, offset) check makes each entry count them exactly once.
- segments: the position is written after the entries of each message, in the same
  changelog partition, without waiting: whatever prefix of those writes survives a crash,
  the entries' per-(source partition, offset) checks make the messages after the restored
  position apply exactly once when they are read again.
- both: a message at or below the position is skipped; a message beyond position + 1 means
  the consumer skipped something, which is read back from Kafka and applied first, in
  order.
Emitting: the notes of what a flush is about to emit (aggregate-emitted) are acknowledged
before its records are sent, and the records and alerts before the flush's entries and
position are written. After a restart the last flush's records are emitted again (see
stream/aggregation.py): a crash may have cut them off.
Rebalances: a segment handler that a revocation interrupted (faust signals revocation
while an agent may still be inside a message) stops at its next step without writing
(`SupersededError`): the partition's next owner applies its messages again from the tables.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import zlib
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    MutableMapping,
)
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import faust
import mode
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import ChannelT, EventT, StreamT
from faust.web import Request, Response, View
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
)

from stream.aggregation import Aggregator, by_dimension
from stream.alerting import Emitted, SpikeAlerts
from stream.c_heap import heap_figures, heap_trimmer
from stream.customers import CustomerStage, partition_for
from stream.events import MAX_ID_LENGTH
from stream.faust_consumer import use_worker_consumer
from stream.gc_schedule import GC_INTERVAL_SECONDS, Collector
from stream.ingest import Ingest
from stream.kafka_config import aiokafka_options, faust_credentials
from stream.local_pipeline import merge_watermarks
from stream.observability import (
    HealthMetrics,
    Metrics,
    TableSizes,
    WindowCollector,
    exposition,
    register_c_heap,
    register_rocksdb_memory,
)
from stream.records import encode_record
from stream.rocksdb_memory import RocksDBMemory
from stream.routing import Decoded, decode_customer_batch, decode_deltas, encode_deltas
from stream.settings import Settings
from stream.spikes import SpikeAlert
from stream.tables import BulkTable, DurableTable, LazyProducer, PartitionStore

log = logging.getLogger(__name__)
TICK = b"tick"
T = TypeVar("T")

# Keys of the stages' own bookkeeping inside their tables. Longer than any customer id
# and without the aggregate entries' separator, so they can never collide with data.
RESERVED_PREFIX: Final = "\x00churn-stream\x00" + "~" * MAX_ID_LENGTH
_MIB: Final = 1024 * 1024
REFETCH_TIMEOUT_S: Final = 60.0
# The customer stage takes up to this many queued customer-batch messages at a time and
# applies those of one partition as one batch of at most CHURN_CUSTOMER_BATCH_MAX_BYTES
# and CHURN_CUSTOMER_BATCH_MAX_CUSTOMERS (each customer read and recomputed once for
# all). A take gathers what is queued, and what arrives within CUSTOMER_TAKE_WITHIN_S
# once the queue first runs dry (`queued_takes`).
CUSTOMER_MESSAGES_PER_TAKE: Final = 256
CUSTOMER_TAKE_WITHIN_S: Final = 0.01
# How often the customer stage looks whether the ingest stage caught up, while it lets a
# backlog queue up (CHURN_CUSTOMER_BACKLOG_HOLD_MS).
BACKLOG_POLL_S: Final = 0.02
# Table writes the segment stage may have in flight before it waits for the broker.
MAX_UNACKNOWLEDGED_WRITES: Final = 2000
# The memtables of each table partition's RocksDB database (faust's default is up to
# 3 x 64 MiB). The block cache is not set here: every database of a worker shares one
# of CHURN_ROCKSDB_MEMORY_MB, which these memtables are charged to (rocksdb_memory).
CUSTOMERS_ROCKSDB: Final = {
    "write_buffer_size": 16 * _MIB,
    "max_write_buffer_number": 2,
}
SMALL_TABLE_ROCKSDB: Final = {
    "write_buffer_size": 4 * _MIB,
    "max_write_buffer_number": 2,
}


def position_key(partition: int) -> str:
    return f"{RESERVED_PREFIX}position/{partition}"


def flushing_key(partition: int) -> str:
    """Where a segment flush notes the position it is about to write (see _commit_segments)."""
    return f"{RESERVED_PREFIX}flushing/{partition}"


def is_reserved(key: object) -> bool:
    return isinstance(key, str) and key.startswith(RESERVED_PREFIX)


class WithoutReserved(MutableMapping[str, Any]):
    """A table seen without the bookkeeping keys (what the domain objects get)."""

    def __init__(self, table: MutableMapping[str, Any]) -> None:
        self._table = table

    def __getitem__(self, key: str) -> Any:
        return self._table[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._table[key] = value

    def __delitem__(self, key: str) -> None:
        del self._table[key]

    def __iter__(self) -> Iterator[str]:
        return (key for key in self._table if not is_reserved(key))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def get(self, key: str, default: Any = None) -> Any:
        return self._table.get(key, default)


class BufferedStore(MutableMapping[str, Any]):
    """Reads through to a table, holds writes until `commit`: so that what a flush
    emitted is recorded only once acknowledged, and so that a key written by many
    messages between two flushes reaches the changelog once.

    Writes are held per partition (`select`), and `commit` writes those of the selected
    one: faust sends a table write to the changelog partition of the message being
    processed, so a partition's writes must be committed while one of its messages is."""

    def __init__(self, table: MutableMapping[str, Any]) -> None:
        self._table = table
        self._pending: dict[int | None, dict[str, Any]] = {}
        self._partition: int | None = None

    def select(self, partition: int | None) -> None:
        self._partition = partition

    def _held(self, key: str) -> dict[str, Any] | None:
        for writes in self._pending.values():
            if key in writes:
                return writes
        return None

    def __getitem__(self, key: str) -> Any:
        held = self._held(key)
        return self._table[key] if held is None else held[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._pending.setdefault(self._partition, {})[key] = value

    def __delitem__(self, key: str) -> None:
        raise NotImplementedError("customer histories are never deleted through the buffer")

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def get(self, key: str, default: Any = None) -> Any:
        held = self._held(key)
        return self._table.get(key, default) if held is None else held[key]

    def commit(self) -> None:
        """Write what the selected partition holds."""
        for key, value in self._pending.pop(self._partition, {}).items():
            self._table[key] = value

    def discard(self) -> None:
        self._pending.clear()


class Refetcher:
    """Reads back internal messages the faust consumer skipped (own aiokafka consumer)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def _client(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **aiokafka_options(self._settings),
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def log_start(self, topic: str, partition: int) -> int:
        async with self._lock:
            consumer = await self._client()
            tp = TopicPartition(topic, partition)
            offsets = await consumer.beginning_offsets([tp])
            return int(offsets[tp])

    async def read(self, topic: str, partition: int, start: int, end: int) -> list[Any]:
        """The messages with start <= offset < end (fewer if retention removed some)."""
        async with self._lock:
            consumer = await self._client()
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, start)
            found: list[Any] = []
            deadline = time.monotonic() + REFETCH_TIMEOUT_S
            while time.monotonic() < deadline:
                batches = await consumer.getmany(tp, timeout_ms=500)
                for message in batches.get(tp, []):
                    if message.offset >= end:
                        return found
                    if message.offset >= start:
                        found.append(message)
                if found and found[-1].offset >= end - 1:
                    return found
            raise RuntimeError(
                f"could not read {topic}[{partition}] offsets {start}..{end - 1} "
                f"within {REFETCH_TIMEOUT_S:.0f}s"
            )

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


Outputs = tuple[Any, Any]  # (metric topic, alert topic)


@dataclass
class Worker:
    """Everything one worker process holds, assembled by `create_app`."""

    app: faust.App
    settings: Settings
    metrics: Metrics
    health: HealthMetrics
    customers: CustomerStage
    customers_table: BulkTable
    customer_store: PartitionStore
    aggregator: Aggregator
    aggregate_tables: tuple[DurableTable, DurableTable, DurableTable]
    # the aggregate entries and meta, written once per flush (see _commit_segments)
    aggregate_stores: tuple[BufferedStore, BufferedStore]
    emitted_store: BufferedStore
    spikes: SpikeAlerts
    spike_table: DurableTable
    spike_store: BufferedStore
    ingest: Ingest
    refetcher: Refetcher
    state_producer: LazyProducer
    rocksdb_memory: RocksDBMemory | None  # None with the memory store
    # customer partition -> input partition -> event time: what that partition has seen
    watermarks: dict[int, dict[int, int]] = field(default_factory=dict)
    last_flush: dict[int, float] = field(default_factory=dict)
    # partition -> last offset this process completed (customers / segments stage)
    confirmed: dict[str, dict[int, int]] = field(
        default_factory=lambda: {"customers": {}, "segments": {}}
    )
    # segment partition -> offset through which its messages must be applied again before
    # it may emit: its last flush was cut off, so its entries are partly ahead of its position
    flush_held_until: dict[int, int] = field(default_factory=dict)
    assigned: dict[str, set[int]] = field(default_factory=dict)
    # customer partition -> acknowledgements of the differences its last batch sent
    delta_acks: dict[int, list[Any]] = field(default_factory=dict)
    # revocations and assignments so far: a handler that began before one must not write
    rebalances: int = 0
    # segment partition -> the tick scheduled for when its next flush is due
    due_ticks: dict[int, asyncio.TimerHandle] = field(default_factory=dict)
    send_tick: Callable[[int], Awaitable[Any]] | None = None  # set by _wire

    def tables_acknowledged(self) -> bool:
        """Whether every table write this process made is in the changelog (then the local
        tables may be kept for the next start: stream/local_state.py)."""
        tables = (self.customers_table, *self.aggregate_tables, self.spike_table)
        return all(table.all_acknowledged() for table in tables)


def _faust_app(settings: Settings) -> faust.App:
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    return faust.App(
        settings.app_id,
        broker=settings.broker,
        broker_credentials=faust_credentials(settings),
        store=settings.store,
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_allow_declare=True,
        web_enabled=True,
        web_host=settings.metrics_host,
        web_bind=settings.metrics_host,  # faust binds 0.0.0.0 unless told
        web_port=settings.metrics_port,
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_seconds / 10),
        consumer_group_instance_id=settings.group_instance_id,
        table_standby_replicas=settings.standby_replicas,
        producer_linger=0.005,
        producer_max_batch_size=settings.producer_max_batch_size,
        consumer_auto_offset_reset="earliest",
        table_cleanup_interval=3600.0,
        autodiscover=False,
        Table=DurableTable,
    )


def _customer_stage(store: MutableMapping[str, Any], settings: Settings) -> CustomerStage:
    """The customer stage (retention: CHURN_RETENTION_DAYS)."""
    return CustomerStage(
        store, settings.dimensions, settings.inactivity_days, settings.retention_days
    )


def _bound_producer_buffer(app: faust.App) -> None:
    """faust buffers table writes for its producer and, past 100 of them (hard-coded),
    logs "producer buffer full" and drains the buffer before its streams go on. A flush
    writes hundreds of entries by design, and the segment stage bounds its unacknowledged
    writes itself (`DurableTable.backpressure`): faust's bound is set to the same. (The
    customer stage waits for all of a batch's writes on each message.)"""
    app.producer.buffer.max_messages = MAX_UNACKNOWLEDGED_WRITES


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> Worker:
    app = _faust_app(settings)
    use_worker_consumer(app, aiokafka_options(settings))
    _bound_producer_buffer(app)
    metrics = Metrics.create(registry or CollectorRegistry())
    health = HealthMetrics.create(metrics.registry)

    def table(name: str) -> DurableTable:
        created = app.Table(
            name,
            default=None,
            partitions=settings.partitions,
            key_type=str,
            options=SMALL_TABLE_ROCKSDB,
        )
        assert isinstance(created, DurableTable)
        return created

    customers_table = _bulk_table(app, "customers", settings)
    entries, meta, emitted = (
        table("aggregate-entries"),
        table("aggregate-meta"),
        table("aggregate-emitted"),
    )
    store = PartitionStore(customers_table, is_reserved)
    spike_table = table("spike-state")
    state_producer = LazyProducer(aiokafka_options(settings))
    rocksdb_memory = _rocksdb_memory(settings, metrics.registry)
    for restored_in_bulk in (customers_table, entries, meta, emitted, spike_table):
        restored_in_bulk.attach(state_producer)
        if rocksdb_memory is not None:
            restored_in_bulk.share_rocksdb_memory(rocksdb_memory)
    entries_store, meta_store = BufferedStore(entries), BufferedStore(meta)
    emitted_store = BufferedStore(emitted)
    spike_store = BufferedStore(spike_table)
    worker = Worker(
        app=app,
        settings=settings,
        metrics=metrics,
        health=health,
        customers=_customer_stage(store, settings),
        customers_table=customers_table,
        customer_store=store,
        aggregator=Aggregator(
            WithoutReserved(entries_store),
            meta_store,
            emitted_store,
            grace_ms=settings.grace_seconds * 1000,
            max_segments=settings.max_segments,
        ),
        aggregate_tables=(entries, meta, emitted),
        aggregate_stores=(entries_store, meta_store),
        emitted_store=emitted_store,
        spikes=SpikeAlerts(spike_store),
        spike_table=spike_table,
        spike_store=spike_store,
        ingest=Ingest(settings, metrics, health),
        refetcher=Refetcher(settings),
        state_producer=state_producer,
        rocksdb_memory=rocksdb_memory,
    )
    metrics.registry.register(
        WindowCollector(
            lambda: worker.aggregator,
            worker.spikes.scores,
            published=lambda dimension: _owner(worker, dimension) not in worker.flush_held_until,
        )
    )
    metrics.registry.register(
        TableSizes(
            {
                "customers": customers_table,
                "aggregate-entries": entries,
                "aggregate-meta": meta,
                "aggregate-emitted": emitted,
                "spike-state": spike_table,
            },
            [
                key
                for partition in range(settings.partitions)
                for key in (
                    position_key(partition),
                    position_key(partition).encode(),
                    flushing_key(partition),
                )
            ],
        )
    )
    ProcessCollector(registry=metrics.registry)
    figures = heap_figures()
    if figures is not None:
        register_c_heap(metrics.registry, figures)
    _wire(worker)
    return worker


def _rocksdb_memory(settings: Settings, registry: CollectorRegistry) -> RocksDBMemory | None:
    """The one memory budget of the worker's RocksDB databases, and its gauge."""
    if settings.store != "rocksdb://":
        return None
    memory = RocksDBMemory(settings.rocksdb_memory_mb * _MIB)
    register_rocksdb_memory(registry, memory.usage_bytes)
    return memory


def _bulk_table(app: faust.App, name: str, settings: Settings) -> BulkTable:
    table = BulkTable(
        app,
        name=name,
        default=None,
        beacon=app.tables.beacon,
        partitions=settings.partitions,
        key_type=bytes,  # raw keys and values, also in the changelog
        value_type=bytes,
        options=CUSTOMERS_ROCKSDB,
    )
    app.tables.add(table)
    return table


def _raw_topic(app: faust.App, name: str, partitions: int) -> Any:
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )


def _wire(worker: Worker) -> None:
    app, settings = worker.app, worker.settings
    customer_topic = _raw_topic(app, settings.customer_topic, settings.partitions)
    delta_topic = _raw_topic(app, settings.delta_topic, settings.partitions)
    output_topic = _raw_topic(app, settings.output_topic, settings.partitions)
    outputs = (output_topic, _raw_topic(app, settings.alert_topic, settings.partitions))

    @app.agent(customer_topic, name="customers")
    async def customers(stream: StreamT[bytes]) -> None:
        takes = queued_takes(stream, CUSTOMER_MESSAGES_PER_TAKE, CUSTOMER_TAKE_WITHIN_S)
        async for events in takes:
            messages = [event.message for event in events]
            await _guarded(worker, "customers", _apply_taken(worker, messages, delta_topic))
            await _let_backlog_queue(worker)

    @app.agent(delta_topic, name="segments")
    async def segments(stream: StreamT[bytes]) -> None:
        async for event in stream.events():
            await _guarded(worker, "segments", _on_deltas(worker, event, outputs))

    app.add_dependency(_IngestJoin(worker.ingest))

    @app.task
    async def ingest() -> None:
        try:
            await worker.ingest.run()
        except Exception as error:
            log.exception("ingest stopped; stopping the worker")
            await app.crash(error)
            raise

    async def send_tick(partition: int) -> None:
        await delta_topic.send(value=TICK, partition=partition)

    worker.send_tick = send_tick

    @app.timer(settings.emit_interval_seconds)
    async def tick() -> None:
        for partition in _assigned(app, settings.delta_topic):
            await send_tick(partition)

    collector = Collector()

    @app.timer(GC_INTERVAL_SECONDS)
    async def collect_garbage() -> None:
        collector.collect()

    trim_heap = heap_trimmer()
    if trim_heap is not None and settings.heap_trim_interval_seconds > 0:

        @app.timer(settings.heap_trim_interval_seconds)
        async def release_free_heap() -> None:
            # in a thread: the event loop runs on while glibc walks the heap (2-40 ms)
            released = await asyncio.to_thread(trim_heap)
            worker.health.heap_trims.labels(str(released).lower()).inc()

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # mode's handler type
    async def reload(sender: Any, *args: Any, **kwargs: Any) -> None:
        _forget_unflushed(worker)
        worker.aggregator.load()
        owned = set(_assigned(app, settings.delta_topic))
        worker.spikes.load(lambda dimension: _owner(worker, dimension) in owned)
        worker.customers.rebuild_expiries(worker.customer_store.every_item())
        _report_assignment(worker)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # mode's handler type
    async def revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        _forget_unflushed(worker)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # mode's handler type
    async def closed(sender: Any, *args: Any, **kwargs: Any) -> None:
        _cancel_due_ticks(worker)
        await worker.refetcher.stop()
        await worker.state_producer.stop()

    class MetricsPage(View):
        async def get(self, request: Request) -> Response:
            body = exposition(worker.metrics.registry, _requested_names(request))
            return self.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])

    app.page("/metrics")(MetricsPage)


class _IngestJoin(mode.Service):  # type: ignore[misc]
    """Starts the ingest stage's clients when the app starts: faust starts app tasks, the
    ingest task among them, only once the tables are restored, and the input's consumer
    group then took another join (~5 s on the embedded broker) before the worker read."""

    def __init__(self, ingest: Ingest) -> None:
        super().__init__()
        self._ingest = ingest

    async def on_start(self) -> None:
        self._ingest.start_joining()

    async def on_stop(self) -> None:
        await self._ingest.stop_unless_running()


def _requested_names(request: Request) -> list[str]:
    """The `name[]` query parameters of a /metrics request (the key repeats)."""
    query: Any = request.query  # aiohttp's MultiDictProxy; faust types it as a Mapping
    return list(query.getall("name[]", []))


class SupersededError(Exception):
    """A rebalance began while a message was being handled: what the handler applied was
    discarded, and the partition's next owner applies the message again from the tables."""


def _still_current(worker: Worker, rebalances: int) -> None:
    """Raise `SupersededError` if a rebalance happened since the handler read `rebalances`."""
    if worker.rebalances != rebalances:
        raise SupersededError


async def _guarded(worker: Worker, stage: str, work: Any) -> None:
    """Run one message's work; any failure stops the worker. (An exception inside a faust
    agent would otherwise restart the agent with the message acked, i.e. skipped.)"""
    try:
        await work
    except SupersededError:
        log.info("%s: a rebalance interrupted a message; it is applied again", stage)
    except asyncio.CancelledError:
        raise
    except Exception as error:
        log.exception("%s stage failed; stopping the worker", stage)
        await worker.app.crash(error)
        raise


def _assigned(app: faust.App, topic: str) -> list[int]:
    return sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == topic)


def _report_assignment(worker: Worker) -> None:
    for topic in (worker.settings.customer_topic, worker.settings.delta_topic):
        partitions = set(_assigned(worker.app, topic))
        previous = worker.assigned.get(topic, set())
        if partitions != previous:
            log.info("assigned %s partitions %s", topic, sorted(partitions))
        worker.health.set_assignment(topic, partitions, previous)
        worker.assigned[topic] = partitions


# -- customers stage ----------------------------------------------------------------------


DeltaMessage = tuple[str, int, bytes]  # (dimension, segment partition, encoded differences)


def _pack(value: bytes) -> str:
    return base64.b64encode(zlib.compress(value, 1)).decode()


def _unpack(value: str) -> bytes:
    return zlib.decompress(base64.b64decode(value))


def _value(message: Any) -> bytes:
    """An internal message's value: only this application writes those topics, never null."""
    value: bytes | None = message.value
    if value is None:
        raise ValueError(
            f"{message.topic}[{message.partition}] offset {message.offset} has no value"
        )
    return value


def _wal_key(partition: int) -> bytes:
    return position_key(partition).encode()


def by_partition(messages: list[Any]) -> list[list[Any]]:
    """The messages of each partition, in the order they came."""
    groups: dict[int, list[Any]] = {}
    for message in messages:
        groups.setdefault(message.partition, []).append(message)
    return list(groups.values())


def bounded_runs(
    items: Iterable[T],
    size: Callable[[T], int],
    customers: Callable[[T], set[str]],
    max_bytes: int,
    max_customers: int,
) -> Iterator[list[T]]:
    """`items` in order, cut into runs of at most `max_bytes` in all and `max_customers`
    distinct customers (an item over either bound alone). Lazy: an item is looked at only
    once the run before it has been taken."""
    run: list[T] = []
    run_bytes = 0
    run_customers: set[str] = set()
    for item in items:
        item_bytes = size(item)
        item_customers = customers(item)
        added = item_customers - run_customers
        over_bytes = run_bytes + item_bytes > max_bytes
        if run and (over_bytes or len(run_customers) + len(added) > max_customers):
            yield run
            run, run_bytes, run_customers, added = [], 0, set(), item_customers
        run.append(item)
        run_bytes += item_bytes
        run_customers |= added
    if run:
        yield run


CustomerMessage = tuple[Any, Decoded]  # a customer-batch message and its decoded value


def _customer_runs(messages: list[Any], settings: Settings) -> Iterator[list[CustomerMessage]]:
    """One partition's customer-batch messages, decoded one at a time, in runs to apply
    as one batch. The customer bound is what keeps memory flat: each distinct customer of a
    run is read, recomputed and written (and held until then) once, whatever the number of
    its events; the byte bound caps the events held."""
    return bounded_runs(
        ((message, decode_customer_batch(_value(message))) for message in messages),
        size=lambda item: len(item[0].value),
        customers=lambda item: {event.customer_id for event in item[1][1]},
        max_bytes=settings.customer_batch_max_bytes,
        max_customers=settings.customer_batch_max_customers,
    )


async def queued_takes(
    stream: StreamT[Any], max_events: int, within_s: float
) -> AsyncIterator[list[EventT]]:
    """The stream's events in takes of at most `max_events`: a take waits for the next
    event, then adds those queued in the agent's channel; the first time the queue runs
    dry it waits `within_s` once for more (messages forwarded together arrive one fetch
    apart). Its events are acknowledged once the body has handled them (not when it
    raised: the worker stops and reads them again). faust's `take_events` fills its buffer
    in the background, one message per event-loop turn, for a fixed window: on a backlog,
    with other tasks taking their turns, it returned 5 of 211 queued messages and left the
    rest to small takes (README, Measured here)."""
    assert isinstance(stream.channel, ChannelT)  # an agent's stream reads its topic's channel
    queue = stream.channel.queue
    stream.enable_acks = False
    taken: list[EventT] = []
    waited = False
    async for event in stream.events():
        taken.append(event)
        if len(taken) < max_events and queue.empty() and not waited:
            waited = True
            await asyncio.sleep(within_s)
        if len(taken) < max_events and not queue.empty():
            continue
        yield taken
        for handled in taken:
            await stream.ack(handled)
        taken, waited = [], False


async def _let_backlog_queue(worker: Worker) -> None:
    """While the ingest stage is more than a batch behind its input, wait up to
    CHURN_CUSTOMER_BACKLOG_HOLD_MS before the next take, so that more of each customer's
    events queue up for one batch (README, How it works). Stops waiting once the ingest
    has caught up, and once faust suspends the flow for a rebalance or a stop (it then
    waits for this take's messages, acknowledged when the next take begins)."""
    settings = worker.settings
    deadline = time.monotonic() + settings.customer_backlog_hold_ms / 1000
    while (
        time.monotonic() < deadline
        and worker.ingest.backlog() > settings.batch_max_records
        and worker.app.flow_control.is_active()
    ):
        await asyncio.sleep(BACKLOG_POLL_S)


async def _apply_taken(worker: Worker, messages: list[Any], delta_topic: Any) -> None:
    """Apply the customer-batch messages of one take, partition by partition, in runs
    (decoding included: a message that cannot be decoded stops the worker)."""
    for group in by_partition(messages):
        for run in _customer_runs(group, worker.settings):
            # Taken before a rebalance (also one during an earlier run of this take): faust
            # would skip these now, and the next message of a partition still ours reads
            # them back (its position says so).
            generation = worker.app.consumer_generation_id
            current = [item for item in run if item[0].generation_id == generation]
            if current:
                await _on_customer_batches(worker, current, delta_topic)


async def _on_customer_batches(
    worker: Worker, run: list[CustomerMessage], delta_topic: Any
) -> None:
    """Customer-batch messages of one partition, applied as one batch: under a backlog
    they queue up, and applying them together reads and recomputes each customer once."""
    messages = [message for message, _ in run]
    partition = messages[0].partition
    topic = worker.settings.customer_topic
    stored = worker.customers_table.read(partition, _wal_key(partition))
    record = None if stored is None else orjson.loads(stored)
    done = None if record is None else int(record["o"])
    confirmed = worker.confirmed["customers"]
    if record is not None and done is not None and confirmed.get(partition) != done:
        # First message of this partition since (re)assignment: the last recorded batch
        # may be half done (differences sent, histories not all written). Finish it.
        in_hand = {message.offset: _value(message) for message in messages}
        await _redo_customer_batch(worker, partition, record, in_hand, delta_topic)
    fresh = fresh_in_offset_order(messages, done)
    if len(fresh) < len(messages):
        worker.health.redelivered.labels("customers").inc(len(messages) - len(fresh))
    if not fresh:
        return
    start = done + 1 if done is not None else await _log_start(worker, topic, partition)
    batch = [(message.offset, _value(message)) for message in fresh]
    if [offset for offset, _ in batch] != list(range(start, start + len(batch))):
        batch = await _with_skipped(worker, partition, start, batch)
    decoded = {message.offset: payload for message, payload in run}
    payloads = [
        decoded[offset] if offset in decoded else decode_customer_batch(raw)
        for offset, raw in batch
    ]
    await _apply_customer_batch(worker, partition, batch, payloads, delta_topic)
    for message in fresh:
        worker.metrics.observe_latency("customers", message.timestamp)


def fresh_in_offset_order(messages: list[Any], done: int | None) -> list[Any]:
    """The messages of one partition after offset `done`, each offset once, in offset order.
    After a takeover faust has handed a partition's messages over out of order in one take
    (one ended with the first fresh offset after later ones); the read-back of what it
    skipped and the batch's recorded range depend on this order."""
    by_offset = {m.offset: m for m in messages if done is None or m.offset > done}
    return [by_offset[offset] for offset in sorted(by_offset)]


async def _with_skipped(
    worker: Worker, partition: int, start: int, batch: list[tuple[int, bytes]]
) -> list[tuple[int, bytes]]:
    """`batch` (in offset order) with the messages from `start` on that the consumer
    skipped, read back."""
    topic = worker.settings.customer_topic
    in_hand = dict(batch)
    last = batch[-1][0]
    read = await worker.refetcher.read(topic, partition, start, last + 1)
    skipped = [(message.offset, message.value) for message in read if message.offset not in in_hand]
    log.warning(
        "customers: consumer skipped %d of %s[%d] offsets %d..%d; applying them read back",
        len(skipped),
        topic,
        partition,
        start,
        last,
    )
    worker.health.refetched.labels("customers").inc(len(skipped))
    return sorted([*batch, *skipped])


async def _apply_customer_batch(
    worker: Worker,
    partition: int,
    batch: list[tuple[int, bytes]],
    payloads: list[Decoded],
    delta_topic: Any,
) -> None:
    """Apply consecutive messages (offset, value) of a partition, decoded as `payloads`,
    as one batch."""
    first, last = batch[0][0], batch[-1][0]
    known = worker.watermarks.setdefault(partition, {})
    events, watermarks_moved = _merge_decoded(known, payloads)
    worker.customer_store.select(partition)
    outcome = worker.customers.apply_batch(events, min(known.values()) if known else None)
    messages: list[DeltaMessage] = []
    for dimension, deltas in by_dimension(outcome.deltas, worker.settings.dimensions).items():
        if not deltas and not watermarks_moved:
            continue
        value = encode_deltas(partition, last, known, deltas)
        messages.append((dimension, partition_for(dimension, worker.settings.partitions), value))
    # Write-ahead: what is about to be sent, durable before it is sent. The previous
    # batch's differences must be acknowledged first: this record replaces theirs.
    await _settle_deltas(worker, partition)
    wal = {
        "f": first,
        "o": last,
        "d": [[dimension, target, _pack(value)] for dimension, target, value in messages],
    }
    table = worker.customers_table
    table.stage(partition, _wal_key(partition), orjson.dumps(wal))
    await table.flush()
    worker.delta_acks[partition] = await _send_deltas(delta_topic, messages)
    # The histories follow the record in the same changelog partition, so the next
    # record's acknowledgement implies theirs.
    worker.customer_store.commit()
    await table.send()
    worker.confirmed["customers"][partition] = last
    worker.metrics.applied_events.inc(outcome.applied)
    worker.metrics.customer_batches.inc()
    worker.metrics.duplicate_events.inc(outcome.duplicates)
    worker.health.beyond_retention.inc(outcome.beyond_retention)


def _merge_decoded(known: dict[int, int], payloads: list[Decoded]) -> tuple[list[Any], bool]:
    """The events of the decoded messages, their watermarks merged into `known` in order;
    and whether any message carried watermarks."""
    events: list[Any] = []
    carried = False
    for input_watermarks, decoded in payloads:
        merge_watermarks(known, input_watermarks)
        carried = carried or bool(input_watermarks)
        events.extend(decoded)
    return events, carried


async def _settle_deltas(worker: Worker, partition: int) -> None:
    for ack in worker.delta_acks.pop(partition, []):
        await ack


async def _redo_customer_batch(
    worker: Worker,
    partition: int,
    record: dict[str, Any],
    in_hand: dict[int, bytes],
    delta_topic: Any,
) -> None:
    """Finish the recorded batch: offsets f..o (records before batching have only o)."""
    last = int(record["o"])
    first = int(record.get("f", last))
    messages = [(dimension, target, _unpack(value)) for dimension, target, value in record["d"]]
    worker.customer_store.select(partition)
    raws = await _recorded_messages(worker, partition, first, last, in_hand)
    if len(raws) < last - first + 1:
        log.warning(
            "customers: %d of the messages %d..%d of partition %d are gone; re-sending "
            "their differences",
            last - first + 1 - len(raws),
            first,
            last,
            partition,
        )
    if raws:
        known = worker.watermarks.setdefault(partition, {})
        events, _ = _merge_decoded(known, [decode_customer_batch(raw) for raw in raws])
        watermark = min(known.values()) if known else None
        worker.customers.apply_batch(events, watermark)  # histories only: the differences
        # that were computed before the crash are the ones re-sent below
    for ack in await _send_deltas(delta_topic, messages):
        await ack
    worker.customer_store.commit()
    await worker.customers_table.flush()
    worker.confirmed["customers"][partition] = last
    worker.health.redone.inc()
    log.info(
        "customers: completed batch %d..%d of partition %d after a restart", first, last, partition
    )


async def _recorded_messages(
    worker: Worker, partition: int, first: int, last: int, in_hand: dict[int, bytes]
) -> list[bytes]:
    """The values of offsets first..last, from `in_hand` or read back (those still kept)."""
    found = {offset: raw for offset, raw in in_hand.items() if first <= offset <= last}
    if len(found) < last - first + 1:
        topic = worker.settings.customer_topic
        for message in await worker.refetcher.read(topic, partition, first, last + 1):
            if message.value is not None:
                found.setdefault(message.offset, message.value)
    return [found[offset] for offset in sorted(found)]


async def _send_deltas(delta_topic: Any, messages: list[DeltaMessage]) -> list[Any]:
    """Send the differences; the acknowledgements to wait for."""
    return [
        await delta_topic.send(key=dimension.encode(), value=value, partition=target)
        for dimension, target, value in messages
    ]


def _forget_unflushed(worker: Worker) -> None:
    """At a rebalance: what was applied but not yet written is applied again from the
    tables' positions (the segment stage reads back what the consumer has passed)."""
    worker.rebalances += 1
    _cancel_due_ticks(worker)  # what they would flush is discarded below
    for confirmed in worker.confirmed.values():
        confirmed.clear()
    worker.flush_held_until.clear()  # found again from the tables
    for store in (*worker.aggregate_stores, worker.emitted_store, worker.spike_store):
        store.discard()


async def _log_start(worker: Worker, topic: str, partition: int) -> int:
    return await worker.refetcher.log_start(topic, partition)


# -- segments stage -----------------------------------------------------------------------


async def _on_deltas(worker: Worker, event: EventT, outputs: Outputs) -> None:
    message = event.message
    partition, offset = message.partition, message.offset
    topic = worker.settings.delta_topic
    rebalances = worker.rebalances
    done = worker.confirmed["segments"].get(partition)
    if done is None:
        done = _resume_segments(worker, partition)
    if done is not None and offset <= done:
        worker.health.redelivered.labels("segments").inc()
        return
    start = done + 1 if done is not None else await _log_start(worker, topic, partition)
    if offset > start:
        # After a restart or rebalance: messages applied before but not flushed, or
        # messages the consumer skipped.
        missed = await worker.refetcher.read(topic, partition, start, offset)
        _still_current(worker, rebalances)
        log.warning(
            "segments: %s[%d] offsets %d..%d not in the tables; applying %d read back",
            topic,
            partition,
            start,
            offset - 1,
            len(missed),
        )
        for skipped in missed:
            await _apply_deltas(
                worker, partition, skipped.offset, skipped.key, skipped.value, outputs, rebalances
            )
            worker.health.refetched.labels("segments").inc()
    produced_s = message.timestamp
    await _apply_deltas(
        worker, partition, offset, message.key, _value(message), outputs, rebalances, produced_s
    )


def _resume_segments(worker: Worker, partition: int) -> int | None:
    """The table's position of a partition, at its first message since assignment. If the
    last flush was cut off (a crash between its entries and its position), some entries
    already include messages after the position: hold the partition's flushes until those
    messages are applied again, so that nothing is emitted from that mixed state."""
    entries = worker.aggregate_tables[0]
    stored, noted = entries.get(position_key(partition)), entries.get(flushing_key(partition))
    position = None if stored is None else int(stored)
    flushing = None if noted is None else int(noted)
    cut_off = flushing is not None and (position is None or flushing > position)
    if cut_off and flushing is not None and worker.flush_held_until.get(partition) != flushing:
        # (called again for each message redelivered below the position: log once)
        worker.flush_held_until[partition] = flushing
        log.warning(
            "segments: the last flush of %s[%d] was cut off; emitting again once offsets "
            "through %d are applied",
            worker.settings.delta_topic,
            partition,
            flushing,
        )
    return position


def _flush_held(worker: Worker, partition: int) -> bool:
    held_until = worker.flush_held_until.get(partition)
    if held_until is None:
        return False
    if worker.confirmed["segments"].get(partition, -1) < held_until:
        return True
    del worker.flush_held_until[partition]
    return False


async def _apply_deltas(
    worker: Worker,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes,
    outputs: Outputs,
    rebalances: int,
    produced_s: float | None = None,
) -> None:
    """Apply one message (`produced_s`: its Kafka timestamp, None for one read back)."""
    _still_current(worker, rebalances)
    for store in worker.aggregate_stores:
        store.select(partition)
    if value != TICK:
        assert key is not None
        message = decode_deltas(value)
        worker.aggregator.apply(
            key.decode(), message.source, message.offset, message.watermarks, message.deltas
        )
    worker.confirmed["segments"][partition] = offset
    if produced_s is not None:
        worker.metrics.observe_latency("segments", produced_s)
    await _maybe_flush(worker, partition, outputs, rebalances, changed=value != TICK)
    for table in (*worker.aggregate_tables, worker.spike_table):
        await table.backpressure(MAX_UNACKNOWLEDGED_WRITES)


async def _maybe_flush(
    worker: Worker, partition: int, outputs: Outputs, rebalances: int, changed: bool
) -> None:
    """Flush if the partition's last flush is an emit interval old; otherwise, after a
    change, make sure a message arrives when it is."""
    now = time.monotonic()
    due = worker.last_flush.get(partition, 0.0) + worker.settings.emit_interval_seconds
    if now < due:
        if changed:
            _tick_when_due(worker, partition, due - now)
        return
    if _flush_held(worker, partition):
        return
    worker.last_flush[partition] = now
    started = time.perf_counter()
    records, alerts = _flush_owned(worker, partition)
    if records:
        # Write-ahead: the notes of what is emitted, durable before it is sent. A record
        # sent and its note lost would stay the latest if the counts went back to the
        # older note's (which is then never emitted again).
        worker.emitted_store.commit()
        await worker.aggregate_tables[2].acknowledged()
        _still_current(worker, rebalances)
    output_topic, alert_topic = outputs
    acks = [
        await output_topic.send(key=key.encode(), value=encode_record(record))
        for key, record in records
    ]
    for alert in alerts:
        acks.append(await alert_topic.send(key=alert.key.encode(), value=alert.model_dump_json()))
    for ack in acks:
        await ack
    if acks:
        worker.metrics.flush_seconds.observe(time.perf_counter() - started)
    _still_current(worker, rebalances)
    # Only now that alerts are acknowledged may the spike state say they were sent.
    worker.spike_store.commit()
    _commit_segments(worker, partition)


def _tick_when_due(worker: Worker, partition: int, delay: float) -> None:
    """Make sure a message reaches the partition when its flush is due: the next
    difference may come up to an ingest linger later, and the periodic tick up to an emit
    interval later; meanwhile what was applied waits to be emitted."""
    if partition in worker.due_ticks or worker.send_tick is None:
        return
    loop = asyncio.get_running_loop()
    worker.due_ticks[partition] = loop.call_later(delay, _send_due_tick, worker, partition)


def _send_due_tick(worker: Worker, partition: int) -> None:
    del worker.due_ticks[partition]
    assert worker.send_tick is not None
    sent = asyncio.ensure_future(worker.send_tick(partition))
    sent.add_done_callback(_report_tick_failure)


def _report_tick_failure(sent: asyncio.Future[Any]) -> None:
    if not sent.cancelled() and sent.exception() is not None:
        # harmless: the periodic tick or the next difference triggers the flush instead
        log.warning("segments: a tick for a due flush was not sent: %r", sent.exception())


def _cancel_due_ticks(worker: Worker) -> None:
    for handle in worker.due_ticks.values():
        handle.cancel()
    worker.due_ticks.clear()


def _flush_owned(worker: Worker, partition: int) -> tuple[Emitted, list[SpikeAlert]]:
    """The records and alerts of the dimensions a segment partition owns."""
    records: Emitted = []
    alerts: list[SpikeAlert] = []
    dimensions = ("all", *worker.settings.dimensions)
    for dimension in (d for d in dimensions if _owner(worker, d) == partition):
        emitted = list(worker.aggregator.flush([dimension]))
        records.extend(emitted)
        for alert in worker.spikes.observe(dimension, emitted, worker.aggregator):
            log.warning(
                "churn spike %s: %s %s/%s score %.1f",
                alert.status,
                alert.window,
                alert.dimension,
                alert.segment,
                alert.score,
            )
            alerts.append(alert)
    return records, alerts


def _commit_segments(worker: Worker, partition: int) -> None:
    """Write the partition's aggregate entries and meta changed since its last flush. The
    entries go between a note of the position they reach and that position, all in one
    changelog partition, so after a crash the changelog holds a prefix of these writes: a
    position has all its entries; a note without its position marks a flush cut off,
    whose entries written so far are ahead of the position (see _resume_segments).
    Entries carry the offsets they include: applying a message again to them changes
    nothing."""
    position = worker.confirmed["segments"].get(partition)
    if position is None:
        # A rebalance during this flush's waits discarded the held writes and positions:
        # the messages are applied again from the table's position.
        return
    entries = worker.aggregate_tables[0]
    entries[flushing_key(partition)] = position
    for store in worker.aggregate_stores:
        store.commit()
    entries[position_key(partition)] = position


def _owner(worker: Worker, dimension: str) -> int:
    """The segment-delta partition (and so the worker) that owns a dimension's aggregates."""
    return partition_for(dimension, worker.settings.partitions)
