"""The ingest stage: batched aiokafka consumption of the input topic.

Each `getmany` batch is validated (`route_batch`), invalid records go to the dead-letter
topic, valid events go as ONE message per internal partition to the customer-batch topic,
and the input offsets are committed only after every one of those sends is acknowledged.
A crash before the commit re-delivers the batch; customers absorb the repeats by event_id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from stream import windows
from stream.kafka_config import aiokafka_options
from stream.observability import Metrics
from stream.routing import (
    InputRecord,
    RoutedBatch,
    customer_batches,
    dead_letter,
    route_batch,
)
from stream.settings import Settings

log = logging.getLogger(__name__)


def late_events(routed: RoutedBatch, watermark_ms: int | None, grace_ms: int) -> int:
    """Events whose day window was already final before this batch."""
    if watermark_ms is None:
        return 0
    return sum(
        1
        for events in routed.by_partition.values()
        for event in events
        if windows.end_ms(windows.DAY, windows.first_containing(windows.DAY, event.time_ms))
        + grace_ms
        <= watermark_ms
    )


class Ingest:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._watermarks: dict[int, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._next_offsets: dict[TopicPartition, int] = {}

    @property
    def watermark_ms(self) -> int | None:
        return min(self._watermarks.values()) if self._watermarks else None

    async def _start_clients(self) -> None:
        settings = self._settings
        options = aiokafka_options(settings)
        self._consumer = AIOKafkaConsumer(
            settings.input_topic,
            group_id=f"{settings.app_id}-ingest",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=settings.session_timeout_seconds * 1000,
            heartbeat_interval_ms=max(1000, settings.session_timeout_seconds * 1000 // 10),
            max_poll_records=settings.batch_max_records,
            **options,
        )
        self._producer = AIOKafkaProducer(linger_ms=5, max_batch_size=1 << 20, **options)
        await _start_with_retry(self._producer, "producer", settings.startup_timeout_seconds)
        await _start_with_retry(self._consumer, "consumer", settings.startup_timeout_seconds)

    async def run(self) -> None:
        await self._start_clients()
        assert self._consumer is not None
        self._metrics.up.set(1)
        log.info("ingest consuming %s", self._settings.input_topic)
        try:
            while True:
                batches = await self._consumer.getmany(
                    timeout_ms=200, max_records=self._settings.batch_max_records
                )
                if batches:
                    await self._process(batches)
                self._report_lag()
        finally:
            self._metrics.up.set(0)
            await self.stop()

    async def stop(self) -> None:
        for client in (self._consumer, self._producer):
            if client is not None:
                await client.stop()
        self._consumer = self._producer = None

    async def _process(self, batches: dict[TopicPartition, list[Any]]) -> None:
        assert self._producer is not None and self._consumer is not None
        settings = self._settings
        records = [
            InputRecord(tp.partition, message.offset, message.value, message.key)
            for tp, messages in batches.items()
            for message in messages
        ]
        self._metrics.mark_consumed(len(records))
        routed = route_batch(
            records,
            settings.dimensions,
            settings.partitions,
            now_ms=int(time.time() * 1000),
            max_future_ms=settings.max_future_seconds * 1000,
        )
        late = late_events(routed, self.watermark_ms, settings.grace_seconds * 1000)
        for partition, time_ms in routed.latest_by_input.items():
            self._watermarks[partition] = max(self._watermarks.get(partition, time_ms), time_ms)
        acks = await self._forward(routed)
        await asyncio.gather(*acks)
        committed = {tp: messages[-1].offset + 1 for tp, messages in batches.items()}
        await self._consumer.commit(committed)
        self._next_offsets.update(committed)
        self._count(routed, late)

    async def _forward(self, routed: RoutedBatch) -> list[Awaitable[Any]]:
        assert self._producer is not None
        settings = self._settings
        acks: list[Awaitable[Any]] = []
        messages = customer_batches(routed, self._watermarks, settings.partitions)
        for target, value in messages.items():
            acks.append(await self._producer.send(settings.customer_topic, value, partition=target))
        for rejected in routed.rejected:
            value = dead_letter(rejected, settings.input_topic)
            acks.append(
                await self._producer.send(settings.dlq_topic, value, key=rejected.record.key)
            )
        return acks

    def _count(self, routed: RoutedBatch, late: int) -> None:
        metrics = self._metrics
        for event_type, count in routed.counts_by_type.items():
            metrics.events.labels(event_type).inc(count)
        for rejected in routed.rejected:
            metrics.invalid_events.labels(rejected.reason).inc()
        metrics.late_events.inc(late)
        if self.watermark_ms is not None:
            metrics.watermark.set(self.watermark_ms / 1000)

    def _report_lag(self) -> None:
        assert self._consumer is not None
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is not None and tp in self._next_offsets:
                lag = max(0, highwater - self._next_offsets[tp])
                self._metrics.consumer_lag.labels(str(tp.partition)).set(lag)


async def _start_with_retry(client: Any, name: str, deadline_seconds: float) -> None:
    """Start an aiokafka client, retrying with backoff until the deadline passes."""
    deadline = time.monotonic() + deadline_seconds
    delay = 0.5
    while True:
        try:
            await client.start()
            return
        except (KafkaConnectionError, KafkaError, OSError) as error:
            if time.monotonic() + delay > deadline:
                log.error("kafka %s could not connect before the deadline: %s", name, error)
                raise
            log.warning(
                "kafka %s cannot reach the broker (%s); retrying in %.1fs", name, error, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
