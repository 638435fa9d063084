"""The ingest step and the internal message formats. No Kafka here.

`route_batch` validates a batch of raw input records, sets aside the invalid ones with
their reason (for the dead-letter topic) and groups the valid ones by the internal
partition that owns their customer. The encode/decode pairs are the wire formats of the
two internal topics (customer batches, segment deltas).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson

from stream import windows
from stream.aggregation import DimensionDeltas
from stream.customers import event_from_row, event_to_row, partition_for
from stream.decoding import decode_event
from stream.events import EventType, InvalidEventError, LifecycleEvent


class RecordLike(Protocol):
    """What routing reads of an input message (an aiokafka ConsumerRecord has it)."""

    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def key(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class InputRecord:
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    record: RecordLike
    reason: str
    detail: str


@dataclass(slots=True)
class RoutedBatch:
    by_partition: dict[int, list[LifecycleEvent]] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    latest_by_input: dict[int, int] = field(default_factory=dict)  # input partition -> max time
    late: int = 0  # events whose day window was already final

    @property
    def valid(self) -> int:
        return sum(len(events) for events in self.by_partition.values())

    @property
    def counts_by_type(self) -> dict[str, int]:
        counts: dict[EventType, int] = {}
        for events in self.by_partition.values():
            for event in events:
                counts[event.type] = counts.get(event.type, 0) + 1
        return {str(kind): count for kind, count in counts.items()}


def final_day_cutoff(watermark_ms: int | None, grace_ms: int) -> int | None:
    """Events before this instant belong to a day window that is final at `watermark_ms`
    (its end plus the grace period is at or before the watermark)."""
    if watermark_ms is None:
        return None
    return (watermark_ms - grace_ms) // windows.DAY_MS * windows.DAY_MS


def route_batch(
    records: Iterable[RecordLike],
    dimensions: tuple[str, ...],
    partitions: int,
    now_ms: int,
    max_future_ms: int,
    oldest_ms: int | None = None,
    late_before_ms: int | None = None,
) -> RoutedBatch:
    """Validate, set aside the invalid, group the valid by the partition that owns their
    customer, and count the late ones (before `late_before_ms`)."""
    routed = RoutedBatch()
    by_partition = routed.by_partition
    latest = routed.latest_by_input
    horizon = now_ms + max_future_ms
    late = 0
    for record in records:
        try:
            value = record.value
            if value is None:
                raise InvalidEventError("empty_message", "the message has no value")
            event = decode_event(value, dimensions)
            time_ms = event.time_ms
            if time_ms > horizon:
                raise InvalidEventError(
                    "too_far_in_future", "occurred_at is beyond the allowed clock skew"
                )
            if oldest_ms is not None and time_ms < oldest_ms:
                raise InvalidEventError(
                    "beyond_retention",
                    "occurred_at is older than the watermark minus the retention",
                )
        except InvalidEventError as error:
            routed.rejected.append(Rejected(record, error.reason, error.detail))
            continue
        target = partition_for(event.customer_id, partitions)
        bucket = by_partition.get(target)
        if bucket is None:
            by_partition[target] = [event]
        else:
            bucket.append(event)
        source = record.partition
        if time_ms > latest.get(source, -(1 << 62)):
            latest[source] = time_ms
        if late_before_ms is not None and time_ms < late_before_ms:
            late += 1
    routed.late = late
    return routed


def dead_letter(rejected: Rejected, topic: str) -> bytes:
    """The dead-letter record: the reason, where it came from and the original bytes."""
    value = rejected.record.value
    return orjson.dumps(
        {
            "reason": rejected.reason,
            "detail": rejected.detail,
            "source_topic": topic,
            "source_partition": rejected.record.partition,
            "source_offset": rejected.record.offset,
            "original": None if value is None else value.decode("utf-8", "backslashreplace"),
        }
    )


# -- customer-batch topic ----------------------------------------------------------------
def encode_customer_batch(watermarks: Mapping[int, int], events: list[LifecycleEvent]) -> bytes:
    return orjson.dumps(
        {"w": dict(watermarks), "e": [event_to_row(e) for e in events]},
        option=orjson.OPT_NON_STR_KEYS,
    )


# An internal message stays well below Kafka's default 1 MB message limit.
MAX_INTERNAL_MESSAGE_BYTES: Final = 512 * 1024
# Events per customer-batch message (~360 KiB of the simulator's events). Encoding a
# partition's 20,000 events at once and halving until the halves fit the byte bound
# encoded each event three times (README, Benchmark); fewer events per message than
# this made the customer stage's runs smaller, so customers were read and written more
# often.
MAX_EVENTS_PER_CUSTOMER_MESSAGE: Final = 5000


def encoded_runs(
    watermarks: Mapping[int, int],
    events: list[LifecycleEvent],
    max_bytes: int = MAX_INTERNAL_MESSAGE_BYTES,
    max_events: int = MAX_EVENTS_PER_CUSTOMER_MESSAGE,
) -> list[bytes]:
    """`events` in order as customer-batch messages of at most `max_events` events and
    `max_bytes` bytes each (a single event over the byte bound still makes a message).
    A run over the byte bound is encoded again with as many events as its size says
    should fit, and the runs after it are cut to that size: events are encoded about
    once, not once per halving. An empty list gives one message, which still carries the
    watermarks."""
    if not events:
        return [encode_customer_batch(watermarks, events)]
    messages: list[bytes] = []
    size = max_events
    start = 0
    while start < len(events):
        run = events[start : start + size]
        encoded = encode_customer_batch(watermarks, run)
        if len(encoded) > max_bytes and len(run) > 1:
            size = max(1, min(len(run) - 1, len(run) * max_bytes // len(encoded) * 9 // 10))
            continue
        messages.append(encoded)
        start += len(run)
    return messages


def customer_messages(
    routed: RoutedBatch,
    watermarks: Mapping[int, int],
    partitions: int,
    max_bytes: int = MAX_INTERNAL_MESSAGE_BYTES,
) -> list[tuple[int, bytes]]:
    """(internal partition, message) for every internal partition, in partition order.

    Every partition gets at least one message when the input watermark moved, so that
    every partition's event time advances; a partition with more events than one message
    holds gets several (see `encoded_runs`)."""
    if not routed.latest_by_input:
        return []
    return [
        (target, message)
        for target in range(partitions)
        for message in encoded_runs(watermarks, routed.by_partition.get(target, []), max_bytes)
    ]


Decoded = tuple[dict[int, int], list[LifecycleEvent]]  # (watermarks, events) of a message


def decode_customer_batch(raw: bytes) -> Decoded:
    message = orjson.loads(raw)
    watermarks = {int(p): int(t) for p, t in message["w"].items()}
    return watermarks, [event_from_row(row) for row in message["e"]]


# -- segment-delta topic -----------------------------------------------------------------
def encode_deltas(
    source: int, offset: int, watermarks: Mapping[int, int], deltas: DimensionDeltas
) -> bytes:
    rows = [[kind, k, value, list(counts)] for (kind, k, value), counts in deltas.items()]
    return orjson.dumps(
        {"src": source, "off": offset, "w": dict(watermarks), "d": rows},
        option=orjson.OPT_NON_STR_KEYS,
    )


@dataclass(frozen=True, slots=True)
class DeltaMessage:
    source: int
    offset: int
    watermarks: dict[int, int]
    deltas: DimensionDeltas


def decode_deltas(raw: bytes) -> DeltaMessage:
    message: dict[str, Any] = orjson.loads(raw)
    deltas = {(kind, k, value): tuple(counts) for kind, k, value, counts in message["d"]}
    watermarks = {int(p): int(t) for p, t in message["w"].items()}
    return DeltaMessage(message["src"], message["off"], watermarks, deltas)
