"""faust wiring: `create_app(settings)` assembles topics, tables, agents and the ingest task.

The agents stay thin: decode a message, call the domain (`CustomerStage`, `Aggregator`),
send the result. Nothing happens at import time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import EventT, StreamT
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from stream.aggregation import Aggregator, by_dimension
from stream.customers import CustomerStage, partition_for
from stream.ingest import Ingest
from stream.kafka_config import faust_credentials
from stream.local_pipeline import merge_watermarks
from stream.observability import Metrics, WindowCollector
from stream.records import encode_record
from stream.routing import decode_customer_batch, decode_deltas, encode_deltas
from stream.settings import Settings

log = logging.getLogger(__name__)
TICK = b"tick"


class BufferedStore(MutableMapping[str, Any]):
    """Reads through to a table, holds writes until `commit` — so that a customer's new
    history is written only after the differences it caused were acknowledged."""

    def __init__(self, table: MutableMapping[str, Any]) -> None:
        self._table = table
        self._pending: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key in self._pending:
            return self._pending[key]
        return self._table[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._pending[key] = value

    def __delitem__(self, key: str) -> None:
        raise NotImplementedError("customer histories are never deleted through the buffer")

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def get(self, key: str, default: Any = None) -> Any:
        if key in self._pending:
            return self._pending[key]
        return self._table.get(key, default)

    def commit(self) -> None:
        for key, value in self._pending.items():
            self._table[key] = value
        self._pending.clear()


@dataclass
class Worker:
    """Everything one worker process holds, assembled by `create_app`."""

    app: faust.App
    settings: Settings
    metrics: Metrics
    customers: CustomerStage
    customer_store: BufferedStore
    aggregator: Aggregator
    ingest: Ingest
    watermarks: dict[int, int] = field(default_factory=dict)
    last_flush: dict[int, float] = field(default_factory=dict)


def _faust_app(settings: Settings) -> faust.App:
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
        web_port=settings.metrics_port,
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_seconds / 10),
        producer_linger=0.005,
        consumer_auto_offset_reset="earliest",
        table_cleanup_interval=3600.0,
        autodiscover=False,
    )


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> Worker:
    app = _faust_app(settings)
    metrics = Metrics.create(registry or CollectorRegistry())
    customers_table = app.Table(
        "customers", default=None, partitions=settings.partitions, key_type=str
    )
    entries = app.Table(
        "aggregate-entries", default=None, partitions=settings.partitions, key_type=str
    )
    meta = app.Table("aggregate-meta", default=None, partitions=settings.partitions, key_type=str)
    emitted = app.Table(
        "aggregate-emitted", default=None, partitions=settings.partitions, key_type=str
    )
    store = BufferedStore(customers_table)
    worker = Worker(
        app=app,
        settings=settings,
        metrics=metrics,
        customers=CustomerStage(store, settings.dimensions, settings.inactivity_days),
        customer_store=store,
        aggregator=Aggregator(
            entries,
            meta,
            emitted,
            grace_ms=settings.grace_seconds * 1000,
            max_segments=settings.max_segments,
        ),
        ingest=Ingest(settings, metrics),
    )
    metrics.registry.register(WindowCollector(lambda: worker.aggregator))
    _wire(worker)
    return worker


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

    @app.agent(customer_topic, name="customers")
    async def customers(stream: StreamT[bytes]) -> None:
        async for event in stream.events():
            await _on_customer_batch(worker, event, delta_topic)

    @app.agent(delta_topic, name="segments")
    async def segments(stream: StreamT[bytes]) -> None:
        async for event in stream.events():
            await _on_deltas(worker, event, output_topic)

    @app.task
    async def ingest() -> None:
        logging.getLogger().setLevel(settings.log_level.upper())
        try:
            await worker.ingest.run()
        except Exception as error:
            log.exception("ingest stopped; stopping the worker")
            await app.crash(error)
            raise

    @app.timer(settings.emit_interval_seconds)
    async def tick() -> None:
        for partition in _assigned(app, settings.delta_topic):
            await delta_topic.send(value=TICK, partition=partition)

    @app.on_rebalance_complete.connect
    async def reload(sender: Any, **kwargs: Any) -> None:
        worker.aggregator.load()
        worker.customers.rebuild_expiries()

    class MetricsPage(View):
        async def get(self, request: Request) -> Response:
            body = generate_latest(worker.metrics.registry)
            return self.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])

    app.page("/metrics")(MetricsPage)


def _assigned(app: faust.App, topic: str) -> list[int]:
    return sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == topic)


async def _on_customer_batch(worker: Worker, event: EventT, delta_topic: Any) -> None:
    message = event.message
    input_watermarks, events = decode_customer_batch(event.value)
    merge_watermarks(worker.watermarks, input_watermarks)
    watermark = min(worker.watermarks.values()) if worker.watermarks else None
    outcome = worker.customers.apply_batch(events, watermark)
    acks = []
    for dimension, deltas in by_dimension(outcome.deltas, worker.settings.dimensions).items():
        if not deltas and not input_watermarks:
            continue
        value = encode_deltas(message.partition, message.offset, worker.watermarks, deltas)
        target = partition_for(dimension, worker.settings.partitions)
        acks.append(await delta_topic.send(key=dimension.encode(), value=value, partition=target))
    for ack in acks:
        await ack
    worker.customer_store.commit()
    worker.metrics.applied_events.inc(outcome.applied)
    worker.metrics.duplicate_events.inc(outcome.duplicates)


async def _on_deltas(worker: Worker, event: EventT, output_topic: Any) -> None:
    partition = event.message.partition
    if event.value != TICK:
        dimension = event.key.decode()
        message = decode_deltas(event.value)
        worker.aggregator.apply(
            dimension, message.source, message.offset, message.watermarks, message.deltas
        )
    now = time.monotonic()
    if now - worker.last_flush.get(partition, 0.0) < worker.settings.emit_interval_seconds:
        return
    worker.last_flush[partition] = now
    dimensions = ("all", *worker.settings.dimensions)
    owned = [d for d in dimensions if partition_for(d, worker.settings.partitions) == partition]
    for key, record in worker.aggregator.flush(owned):
        await output_topic.send(key=key.encode(), value=encode_record(record))
