"""The streaming path without Kafka: the same stages and wire formats, lists as topics.

Used by the property tests (shuffled, duplicated, late input must give the batch result)
and as the reference for what the faust agents do with each message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from stream.aggregation import Aggregator, by_dimension
from stream.alerting import SpikeAlerts
from stream.customers import CustomerStage
from stream.routing import (
    InputRecord,
    customer_messages,
    decode_customer_batch,
    decode_deltas,
    encode_deltas,
    route_batch,
)
from stream.spikes import SpikeAlert

FAR_FUTURE_MS = 10**15


def merge_watermarks(known: dict[int, int], update: dict[int, int]) -> None:
    for partition, time_ms in update.items():
        known[partition] = max(known.get(partition, time_ms), time_ms)


def apply_segment_message(aggregator: Aggregator, dimension: str, raw: bytes) -> None:
    """One message of the segment-deltas topic (keyed by dimension)."""
    message = decode_deltas(raw)
    aggregator.apply(dimension, message.source, message.offset, message.watermarks, message.deltas)


@dataclass
class CustomerPartition:
    stage: CustomerStage
    watermarks: dict[int, int] = field(default_factory=dict)
    offset: int = 0

    @property
    def watermark_ms(self) -> int | None:
        return min(self.watermarks.values()) if self.watermarks else None


class LocalPipeline:
    def __init__(
        self,
        dimensions: tuple[str, ...] = (),
        inactivity_days: int | None = None,
        partitions: int = 4,
        grace_seconds: int = 3600,
        max_segments: int = 50,
        retention_days: int | None = None,
    ) -> None:
        self.dimensions = dimensions
        self.partitions = partitions
        self.customers = [
            CustomerPartition(CustomerStage({}, dimensions, inactivity_days, retention_days))
            for _ in range(partitions)
        ]
        self.aggregator = Aggregator(
            {}, {}, {}, grace_ms=grace_seconds * 1000, max_segments=max_segments
        )
        self.latest: dict[str, dict[str, object]] = {}
        self.spikes = SpikeAlerts({})
        self.alerts: list[SpikeAlert] = []
        self.input_watermarks: dict[int, int] = {}
        self.rejected: list[str] = []
        self.applied = 0
        self.duplicates = 0

    def ingest(self, raw_events: Sequence[bytes], input_partition: int = 0) -> None:
        records = [InputRecord(input_partition, i, raw) for i, raw in enumerate(raw_events)]
        routed = route_batch(records, self.dimensions, self.partitions, FAR_FUTURE_MS, 0)
        self.rejected.extend(r.reason for r in routed.rejected)
        merge_watermarks(self.input_watermarks, routed.latest_by_input)
        for target, message in customer_messages(routed, self.input_watermarks, self.partitions):
            self._customer_message(target, message)

    def _customer_message(self, partition: int, raw: bytes) -> None:
        state = self.customers[partition]
        watermarks, events = decode_customer_batch(raw)
        merge_watermarks(state.watermarks, watermarks)
        outcome = state.stage.apply_batch(events, state.watermark_ms)
        self.applied += outcome.applied
        self.duplicates += outcome.duplicates
        state.offset += 1
        for dimension, deltas in by_dimension(outcome.deltas, self.dimensions).items():
            self.segment_message(
                dimension, encode_deltas(partition, state.offset, state.watermarks, deltas)
            )

    def segment_message(self, dimension: str, raw: bytes) -> None:
        apply_segment_message(self.aggregator, dimension, raw)

    def flush(self) -> None:
        for dimension in self.aggregator.dimensions():
            emitted = list(self.aggregator.flush([dimension]))
            self.latest.update(emitted)
            self.alerts.extend(self.spikes.observe(dimension, emitted, self.aggregator))

    def run(self, batches: Iterable[Sequence[bytes]]) -> dict[str, dict[str, object]]:
        for batch in batches:
            self.ingest(batch)
            self.flush()
        self.flush()
        return self.latest
