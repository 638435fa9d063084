"""The ingest stage: batched aiokafka consumption of the input topic.

Each `getmany` batch is validated (`route_batch`), invalid records go to the dead-letter
topic, valid events go to the customer-batch topic in messages of at most
`MAX_EVENTS_PER_CUSTOMER_MESSAGE` events (every internal partition gets at least one, see
`customer_messages`), and the input offsets are committed only after every one of those
sends is acknowledged. A crash before the commit re-delivers the batch; customers absorb
the repeats by event_id.

A watchdog task keeps `churn_ingest_up` and the consumer-lag gauges current even while the
main loop waits on a frozen broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping
from typing import Any, Final

import orjson
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    RebalanceInProgressError,
)

from stream import windows
from stream.kafka_config import FETCH_MAX_WAIT_MS, aiokafka_options
from stream.observability import HealthMetrics, Metrics
from stream.routing import (
    InputRecord,
    Rejected,
    RoutedBatch,
    customer_messages,
    dead_letter,
    encode_customer_batch,
    final_day_cutoff,
    route_batch,
)
from stream.settings import Settings

log = logging.getLogger(__name__)

# Dead letters keep at most this much of the original message and key (bytes, before
# escaping): a 1 MB input would otherwise make an unsendable dead letter.
MAX_DEAD_LETTER_ORIGINAL_BYTES: Final = 64 * 1024
MAX_DEAD_LETTER_KEY_BYTES: Final = 1024
# No fetch response from the broker for this long: `churn_ingest_up` drops to 0.
STALL_SECONDS: Final = 10.0
# How long one read waits for a batch's first records before the loop goes round.
IDLE_POLL_MS: Final = 200
_WATCHDOG_INTERVAL_S: Final = 1.0


def ingest_instance_id(settings: Settings) -> str | None:
    """The ingest consumer's static member name (its group is not faust's, so the name
    must differ from the worker's)."""
    name = settings.group_instance_id
    return None if name is None else f"{name}-ingest"


def bounded_dead_letter(rejected: Rejected, topic: str) -> tuple[bytes, bytes | None]:
    """The dead-letter value and key, with an oversized original or key truncated."""
    record = rejected.record
    value, key = record.value, record.key
    if value is not None and len(value) > MAX_DEAD_LETTER_ORIGINAL_BYTES:
        record = InputRecord(
            record.partition, record.offset, value[:MAX_DEAD_LETTER_ORIGINAL_BYTES], key
        )
        body = orjson.loads(dead_letter(Rejected(record, rejected.reason, rejected.detail), topic))
        body |= {"original_truncated": True, "original_bytes": len(value)}
        encoded = orjson.dumps(body)
    else:
        encoded = dead_letter(rejected, topic)
    if key is not None and len(key) > MAX_DEAD_LETTER_KEY_BYTES:
        key = key[:MAX_DEAD_LETTER_KEY_BYTES]
    return encoded, key


class Ingest:
    def __init__(
        self, settings: Settings, metrics: Metrics, health: HealthMetrics | None = None
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._health = health
        self._watermarks: dict[int, int] = {}
        # Every assigned input partition has been read or has nothing to read: until then
        # the watermark is unknown (a partition not read yet may hold older events).
        self._all_reported = False
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._next_offsets: dict[TopicPartition, int] = {}
        self._read_to: dict[TopicPartition, int] = {}  # the next offset to read
        self._assigned: set[int] = set()
        # When the last batch was taken, if none of the polls since came back empty: the
        # records read next may have been waiting since then (see _read_batch).
        self._taken_at: float | None = None
        self._joining: asyncio.Future[None] | None = None
        self._running = False
        # Between `start_joining` and `run`: assigned partitions are paused, not fetched.
        self._fetching_held = False

    @property
    def watermark_ms(self) -> int | None:
        if not self._all_reported or not self._watermarks:
            return None
        return min(self._watermarks.values())

    def _published_watermarks(self) -> dict[int, int]:
        return self._watermarks if self._all_reported else {}

    async def _partitions_reported(self) -> bool:
        """Whether every assigned input partition has given an event time or is caught up
        (an empty or idle partition must not hold the watermark back for ever)."""
        assert self._consumer is not None
        for tp in self._consumer.assignment():
            if tp.partition not in self._watermarks and not await self._read_to_end(tp):
                return False
        return True

    def backlog(self) -> int:
        """Input records not read yet, over the assigned partitions, as the last fetch
        reported their ends (0 before the first batch). A partition not read from yet
        counts from where its reading starts (`_note_where_reading_starts`): the consumer
        drains one partition's fetched records before the next one's, and a backlog
        counted over the partitions read so far looks caught up whenever the current
        one nearly is."""
        if self._consumer is None:
            return 0
        total = 0
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            read_to = self._read_to.get(tp)
            if highwater is not None and read_to is not None:
                total += max(0, highwater - read_to)
        return total

    async def _caught_up(self) -> bool:
        """Whether every assigned input partition is read to its end, as the last fetch
        reported it."""
        assert self._consumer is not None
        for tp in self._consumer.assignment():
            if not await self._read_to_end(tp):
                return False
        return True

    async def _read_to_end(self, tp: TopicPartition) -> bool:
        assert self._consumer is not None
        highwater = self._consumer.highwater(tp)
        return highwater is not None and await self._consumer.position(tp) >= highwater

    async def _start_clients(self) -> None:
        settings = self._settings
        options = aiokafka_options(settings)
        self._consumer = AIOKafkaConsumer(
            group_id=f"{settings.app_id}-ingest",
            group_instance_id=ingest_instance_id(settings),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=settings.session_timeout_seconds * 1000,
            heartbeat_interval_ms=max(1000, settings.session_timeout_seconds * 1000 // 10),
            max_poll_records=settings.batch_max_records,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            **options,
        )
        self._consumer.subscribe([settings.input_topic], listener=_UnfetchedUntilRunning(self))
        self._producer = AIOKafkaProducer(linger_ms=5, max_batch_size=1 << 20, **options)
        await _start_with_retry(self._producer, "producer", settings.startup_timeout_seconds)
        await _start_with_retry(self._consumer, "consumer", settings.startup_timeout_seconds)

    def start_joining(self) -> None:
        """Start the clients, and with them the join of the input's consumer group, in the
        background: called when the worker starts, the join then overlaps its tables'
        restore instead of following it (README, "Joining the input's group early").
        Nothing is fetched before `run`: the partitions assigned meanwhile stay paused
        (`_UnfetchedUntilRunning`)."""
        if self._joining is None:
            self._fetching_held = True
            self._joining = asyncio.ensure_future(self._start_clients())

    async def stop_unless_running(self) -> None:
        """Stop the clients if `run` never began (the worker stopped before its tables were
        restored); once it has, it stops them itself when it ends."""
        if not self._running:
            await self.stop()

    async def run(self) -> None:
        self._running = True
        self.start_joining()
        assert self._joining is not None
        await self._joining
        assert self._consumer is not None
        if self._fetching_held:
            self._fetching_held = False
            self._consumer.resume(*self._consumer.paused())  # see _UnfetchedUntilRunning
        self._metrics.up.set(1)
        log.info("ingest consuming %s", self._settings.input_topic)
        watchdog = asyncio.ensure_future(self._watch())
        try:
            while True:
                batches = await self._read_batch()
                if batches:
                    await self._process(batches)
                elif not self._all_reported and await self._partitions_reported():
                    self._all_reported = True  # the last partitions turned out empty
                    await self._publish_watermarks()
        finally:
            watchdog.cancel()
            self._metrics.up.set(0)
            await self.stop()

    async def _read_batch(self) -> dict[TopicPartition, list[Any]]:
        """Up to `batch_max_records` records: once some arrive, keep reading to fill the
        batch until `batch_linger_ms` after they started waiting (a live stream otherwise
        makes many tiny ones). Records that queued while the previous batch was processed
        have waited since it was taken, so that time counts against the linger. Once every
        partition is read to its end, fetching pauses for the rest of the linger, and what
        gathered meanwhile comes in one fetch (see `_pause`)."""
        assert self._consumer is not None
        linger_s = self._settings.batch_linger_ms / 1000
        if self._taken_at is not None:
            await self._resume_at(self._taken_at + linger_s)
        limit = self._settings.batch_max_records
        batches = await self._consumer.getmany(timeout_ms=IDLE_POLL_MS, max_records=limit)
        if not batches:
            self._taken_at = None  # idle: what arrives next has waited no longer than this poll
            return batches
        count = sum(len(messages) for messages in batches.values())
        waiting_since = time.monotonic() if self._taken_at is None else self._taken_at
        deadline = waiting_since + linger_s
        while count < limit and (remaining := deadline - time.monotonic()) > 0:
            if await self._caught_up():
                self._pause()
                await self._resume_at(deadline)
                remaining = FETCH_MAX_WAIT_MS / 1000  # the one fetch of what gathered
            more = await self._consumer.getmany(
                timeout_ms=max(1, int(remaining * 1000)), max_records=limit - count
            )
            count += self._extend(batches, more)
        self._taken_at = time.monotonic()
        if linger_s > 0 and await self._caught_up():
            self._pause()  # until the next batch's linger is over
        return batches

    def _pause(self) -> None:
        """Fetch nothing from the assigned partitions until `_resume_at`. A consumer that
        has read to the end otherwise fetches again as soon as its records are taken, and
        then every few milliseconds as records trickle in: each fetch costs the broker a
        lookup in the partition, and the embedded one lists all the partition's record
        batches. Called right after records are taken, before the consumer's fetcher
        runs again, so no fetch is in flight (one that were would only be taken after
        the resume, before a fresh fetch brings what gathered)."""
        assert self._consumer is not None
        self._consumer.pause(*self._consumer.assignment())

    async def _resume_at(self, deadline: float) -> None:
        """If fetching is paused: wait until `deadline`, then resume it."""
        assert self._consumer is not None
        if not self._consumer.paused():
            return
        try:
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        finally:
            # A rebalance meanwhile leaves new partitions unpaused and forgets revoked ones.
            self._consumer.resume(*self._consumer.paused())

    @staticmethod
    def _extend(
        batches: dict[TopicPartition, list[Any]], more: Mapping[TopicPartition, list[Any]]
    ) -> int:
        for tp, messages in more.items():
            batches.setdefault(tp, []).extend(messages)
        return sum(len(messages) for messages in more.values())

    async def _note_where_reading_starts(self) -> None:
        """The next offset to read of every assigned partition not read from yet (its
        position: records fetched but not taken are not read); forget revoked ones."""
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        for tp in [tp for tp in self._read_to if tp not in assigned]:
            del self._read_to[tp]
        for tp in assigned:
            if tp not in self._read_to:
                self._read_to[tp] = await self._consumer.position(tp)

    async def stop(self) -> None:
        if self._joining is not None:
            self._joining.cancel()  # if the worker stops before its tables were restored
            await asyncio.gather(self._joining, return_exceptions=True)
        for client in (self._consumer, self._producer):
            if client is not None:
                await client.stop()
        self._consumer = self._producer = None

    async def _process(self, batches: dict[TopicPartition, list[Any]]) -> None:
        assert self._producer is not None and self._consumer is not None
        settings = self._settings
        records = [message for messages in batches.values() for message in messages]
        # Before the batch is forwarded: the customer stage, woken by it, reads backlog().
        await self._note_where_reading_starts()
        self._read_to.update((tp, messages[-1].offset + 1) for tp, messages in batches.items())
        self._metrics.mark_consumed(len(records))
        routed = route_batch(
            records,
            settings.dimensions,
            settings.partitions,
            now_ms=int(time.time() * 1000),
            max_future_ms=settings.max_future_seconds * 1000,
            oldest_ms=self._oldest_accepted_ms(),
            late_before_ms=final_day_cutoff(self.watermark_ms, settings.grace_seconds * 1000),
        )
        for partition, time_ms in routed.latest_by_input.items():
            self._watermarks[partition] = max(self._watermarks.get(partition, time_ms), time_ms)
        self._all_reported = await self._partitions_reported()
        acks = await self._forward(routed)
        await asyncio.gather(*acks)
        first = min(messages[0].timestamp for messages in batches.values())  # not per event
        self._metrics.observe_latency("ingest", first / 1000)
        committed = {tp: messages[-1].offset + 1 for tp, messages in batches.items()}
        await self._commit(committed)
        self._count(routed)

    async def _publish_watermarks(self) -> None:
        """A message without events to every internal partition, carrying the watermarks."""
        assert self._producer is not None
        settings = self._settings
        value = encode_customer_batch(self._watermarks, [])
        acks = [
            await self._producer.send(settings.customer_topic, value, partition=target)
            for target in range(settings.partitions)
        ]
        await asyncio.gather(*acks)

    def _oldest_accepted_ms(self) -> int | None:
        """With CHURN_RETENTION_DAYS: events older than the watermark minus the retention
        are dead-lettered (`beyond_retention`); the customer stage applies the same rule
        with the watermark as it stands after the batch."""
        retention = self._settings.retention_days
        watermark = self.watermark_ms
        if retention is None or watermark is None:
            return None
        return watermark - retention * windows.DAY_MS

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit; after a rebalance the commit is refused and the new owner of those
        partitions reads the batch again (its events are then duplicates)."""
        assert self._consumer is not None
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as error:
            log.warning("ingest commit refused (%s); the batch will be delivered again", error)
            return
        self._next_offsets.update(offsets)

    async def _forward(self, routed: RoutedBatch) -> list[Awaitable[Any]]:
        assert self._producer is not None
        settings = self._settings
        acks: list[Awaitable[Any]] = []
        messages = customer_messages(routed, self._published_watermarks(), settings.partitions)
        for target, value in messages:
            acks.append(await self._producer.send(settings.customer_topic, value, partition=target))
        for rejected in routed.rejected:
            value, key = bounded_dead_letter(rejected, settings.input_topic)
            acks.append(await self._producer.send(settings.dlq_topic, value, key=key))
        return acks

    def _count(self, routed: RoutedBatch) -> None:
        metrics = self._metrics
        for event_type, count in routed.counts_by_type.items():
            metrics.events.labels(event_type).inc(count)
        for rejected in routed.rejected:
            metrics.invalid_events.labels(rejected.reason).inc()
        metrics.late_events.inc(routed.late)
        if self.watermark_ms is not None:
            metrics.watermark.set(self.watermark_ms / 1000)

    async def _watch(self) -> None:
        """Every second: health, lag and assignment, independent of the main loop."""
        while True:
            await asyncio.sleep(_WATCHDOG_INTERVAL_S)
            if self._consumer is None:
                continue
            try:
                self._report()
            except Exception:  # a report must never stop the worker
                log.exception("ingest health report failed")

    def _report(self) -> None:
        assert self._consumer is not None
        assignment = self._consumer.assignment()
        stamps = []
        for tp in assignment:
            stamp = self._consumer.last_poll_timestamp(tp)
            if stamp is not None:
                stamps.append(stamp)
            highwater = self._consumer.highwater(tp)
            if highwater is not None and tp in self._next_offsets:
                lag = max(0, highwater - self._next_offsets[tp])
                self._metrics.consumer_lag.labels(str(tp.partition)).set(lag)
        if stamps:
            stalled = time.time() * 1000 - max(stamps) > STALL_SECONDS * 1000
            self._metrics.up.set(0 if stalled else 1)
        partitions = {tp.partition for tp in assignment}
        if partitions != self._assigned:
            log.info(
                "ingest assigned %s partitions %s", self._settings.input_topic, sorted(partitions)
            )
            if self._health is not None:
                self._health.set_assignment(self._settings.input_topic, partitions, self._assigned)
            self._assigned = partitions


class _UnfetchedUntilRunning(ConsumerRebalanceListener):  # type: ignore[misc]
    """Pauses the input partitions assigned between `Ingest.start_joining` and `Ingest.run`
    (which resumes them): the consumer would otherwise fetch them as soon as they are
    assigned, and at their end every 100 ms (`FETCH_MAX_WAIT_MS`), from the broker the
    worker restores its tables from meanwhile, records nothing reads yet. aiokafka calls
    this right after it sets the assignment, before its fetcher runs again."""

    def __init__(self, ingest: Ingest) -> None:
        self._ingest = ingest

    def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    def on_partitions_assigned(self, assigned: Any) -> None:
        consumer = self._ingest._consumer
        if self._ingest._fetching_held and consumer is not None:
            consumer.pause(*assigned)


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
