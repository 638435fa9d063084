"""The ingest step and the internal message formats. No Kafka here.

`route_batch` validates a batch of raw input records, sets aside the invalid ones with
their reason (for the dead-letter topic) and groups the valid ones by the internal
partition that owns their customer. The encode/decode pairs are the wire formats of the
two internal topics (customer batches, segment deltas).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from stream.aggregation import DimensionDeltas
from stream.customers import event_from_row, event_to_row, partition_for
from stream.events import InvalidEventError, LifecycleEvent, decode_event


@dataclass(frozen=True, slots=True)
class InputRecord:
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    record: InputRecord
    reason: str
    detail: str


@dataclass(slots=True)
class RoutedBatch:
    by_partition: dict[int, list[LifecycleEvent]] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    latest_by_input: dict[int, int] = field(default_factory=dict)  # input partition -> max time
    counts_by_type: dict[str, int] = field(default_factory=dict)

    @property
    def valid(self) -> int:
        return sum(len(events) for events in self.by_partition.values())


def _check_time(
    event: LifecycleEvent, now_ms: int, max_future_ms: int, oldest_ms: int | None
) -> None:
    if event.time_ms > now_ms + max_future_ms:
        raise InvalidEventError("too_far_in_future", "occurred_at is beyond the allowed clock skew")
    if oldest_ms is not None and event.time_ms < oldest_ms:
        raise InvalidEventError(
            "beyond_retention", "occurred_at is older than the watermark minus the retention"
        )


def route_batch(
    records: Iterable[InputRecord],
    dimensions: tuple[str, ...],
    partitions: int,
    now_ms: int,
    max_future_ms: int,
    oldest_ms: int | None = None,
) -> RoutedBatch:
    routed = RoutedBatch()
    for record in records:
        try:
            if record.value is None:
                raise InvalidEventError("empty_message", "the message has no value")
            event = decode_event(record.value, dimensions)
            _check_time(event, now_ms, max_future_ms, oldest_ms)
        except InvalidEventError as error:
            routed.rejected.append(Rejected(record, error.reason, error.detail))
            continue
        target = partition_for(event.customer_id, partitions)
        routed.by_partition.setdefault(target, []).append(event)
        latest = routed.latest_by_input.get(record.partition, event.time_ms)
        routed.latest_by_input[record.partition] = max(latest, event.time_ms)
        routed.counts_by_type[event.type.value] = routed.counts_by_type.get(event.type.value, 0) + 1
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


def customer_batches(
    routed: RoutedBatch, watermarks: Mapping[int, int], partitions: int
) -> dict[int, bytes]:
    """One message per internal partition; partitions without events still get one when
    the watermark moved, so that every partition's event time advances."""
    if not routed.latest_by_input:
        return {}
    return {
        target: encode_customer_batch(watermarks, routed.by_partition.get(target, []))
        for target in range(partitions)
    }


def decode_customer_batch(raw: bytes) -> tuple[dict[int, int], list[LifecycleEvent]]:
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
