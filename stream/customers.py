"""The customer stage: per-customer histories and the differences they send. No I/O.

`CustomerStage.apply_batch` merges a batch of events into each customer's stored history
(deduplicating by event_id), recomputes the customer's contribution difference array and
returns only what changed. Histories live in a mutable mapping keyed by customer_id (a
faust table in the worker, a dict in tests); each customer is read and written at most
once per batch.
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from stream.contributions import Deltas, customer_deltas, difference
from stream.events import EventType, LifecycleEvent
from stream.formulas import ZERO, add
from stream.lifecycle import build_timeline, ordered_unique, pending_expiry_ms


def partition_for(customer_id: str, partitions: int) -> int:
    """The internal partition that owns a customer (stable across processes)."""
    return zlib.crc32(customer_id.encode()) % partitions


def event_to_row(event: LifecycleEvent) -> list[Any]:
    return [
        event.customer_id,
        event.event_id,
        event.type.value,
        event.time_ms,
        event.mrr_micros,
        event.amount_micros,
        list(event.segment),
    ]


def event_from_row(row: list[Any]) -> LifecycleEvent:
    customer_id, event_id, kind, time_ms, mrr, amount, segment = row
    return LifecycleEvent(
        customer_id, event_id, EventType(kind), time_ms, mrr, amount, tuple(segment)
    )


@dataclass(slots=True)
class BatchOutcome:
    deltas: Deltas
    applied: int = 0
    duplicates: int = 0


def _merge_deltas(target: Deltas, changes: Deltas) -> None:
    for key, counts in changes.items():
        total = add(target.get(key, ZERO), counts)
        if any(total):
            target[key] = total
        else:
            target.pop(key, None)


class CustomerStage:
    """Histories of the customers of the partitions this worker owns."""

    def __init__(
        self,
        store: MutableMapping[str, Any],
        dimensions: tuple[str, ...],
        inactivity_days: int | None,
    ) -> None:
        self._store = store
        self._dimension_count = len(dimensions)
        self._inactivity_days = inactivity_days
        self._expiries: list[tuple[int, str]] = []  # activity mode: (expiry, customer)

    def _history(self, customer_id: str) -> tuple[list[LifecycleEvent], int | None]:
        stored = self._store.get(customer_id)
        if stored is None:
            return [], None
        return [event_from_row(row) for row in stored["e"]], stored["w"]

    def _deltas(self, events: list[LifecycleEvent], watermark_ms: int | None) -> Deltas:
        if not events:
            return {}
        timeline = build_timeline(
            events, self._dimension_count, self._inactivity_days, watermark_ms
        )
        return customer_deltas(timeline)

    def _update(
        self,
        customer_id: str,
        old: list[LifecycleEvent],
        old_watermark: int | None,
        new: list[LifecycleEvent],
        watermark_ms: int | None,
    ) -> Deltas:
        changes = difference(self._deltas(new, watermark_ms), self._deltas(old, old_watermark))
        self._store[customer_id] = {"e": [event_to_row(e) for e in new], "w": watermark_ms}
        expiry = pending_expiry_ms(new, self._inactivity_days, watermark_ms)
        if expiry is not None:
            heapq.heappush(self._expiries, (expiry, customer_id))
        return changes

    def apply_batch(
        self, events: Iterable[LifecycleEvent], watermark_ms: int | None
    ) -> BatchOutcome:
        by_customer: dict[str, list[LifecycleEvent]] = {}
        for event in events:
            by_customer.setdefault(event.customer_id, []).append(event)
        outcome = BatchOutcome({})
        for customer_id, arrived in by_customer.items():
            old, old_watermark = self._history(customer_id)
            seen = {event.event_id for event in old}
            fresh = ordered_unique(e for e in arrived if e.event_id not in seen)
            outcome.duplicates += len(arrived) - len(fresh)
            outcome.applied += len(fresh)
            if not fresh:
                continue
            new = ordered_unique([*old, *fresh])
            _merge_deltas(
                outcome.deltas, self._update(customer_id, old, old_watermark, new, watermark_ms)
            )
        _merge_deltas(outcome.deltas, self.expire(watermark_ms))
        return outcome

    def expire(self, watermark_ms: int | None) -> Deltas:
        """Activity mode: apply the trailing expiries the watermark has now reached."""
        changes: Deltas = {}
        while watermark_ms is not None and self._expiries and self._expiries[0][0] <= watermark_ms:
            expiry, customer_id = heapq.heappop(self._expiries)
            events, old_watermark = self._history(customer_id)
            if pending_expiry_ms(events, self._inactivity_days, old_watermark) != expiry:
                continue  # stale: the history changed since this expiry was scheduled
            _merge_deltas(
                changes, self._update(customer_id, events, old_watermark, events, watermark_ms)
            )
        return changes

    def rebuild_expiries(self) -> None:
        """After recovery: schedule the pending expiries of every stored customer."""
        self._expiries.clear()
        if self._inactivity_days is None:
            return
        for customer_id in list(self._store.keys()):
            events, watermark = self._history(customer_id)
            expiry = pending_expiry_ms(events, self._inactivity_days, watermark)
            if expiry is not None:
                self._expiries.append((expiry, customer_id))
        heapq.heapify(self._expiries)
