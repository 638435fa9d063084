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

from stream.contributions import Deltas, changed_deltas
from stream.events import EventType, LifecycleEvent
from stream.formulas import ZERO, add
from stream.lifecycle import Timeline, build_timeline, ordered_unique, pending_expiry_ms


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


def _never_matters(event: LifecycleEvent, activity_mode: bool) -> bool:
    """Subscription mode: an activity or a bare renewal with no mrr and no dimension
    attribute can never change any metric, whatever arrives later; only its id is kept."""
    return (
        not activity_mode
        and event.type in _BARE_TYPES
        and event.mrr_micros is None
        and all(value is None for value in event.segment)
    )


_BARE_TYPES = frozenset({EventType.ACTIVITY, EventType.RENEWED})


@dataclass(slots=True)
class History:
    """A customer's stored history: the events that may matter, the ids of the rest, and
    the watermark its contributions were last computed with."""

    events: list[LifecycleEvent]
    bare_ids: list[str]
    watermark_ms: int | None

    def seen(self) -> set[str]:
        return {event.event_id for event in self.events} | set(self.bare_ids)

    def to_stored(self) -> dict[str, Any]:
        return {
            "e": [event_to_row(e) for e in self.events],
            "i": self.bare_ids,
            "w": self.watermark_ms,
        }

    @classmethod
    def from_stored(cls, stored: dict[str, Any] | None) -> History:
        if stored is None:
            return cls([], [], None)
        return cls([event_from_row(row) for row in stored["e"]], stored["i"], stored["w"])


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

    def _timeline(self, events: list[LifecycleEvent], watermark_ms: int | None) -> Timeline:
        return build_timeline(events, self._dimension_count, self._inactivity_days, watermark_ms)

    def _update(self, customer_id: str, old: History, new: History) -> Deltas:
        changes = changed_deltas(
            self._timeline(old.events, old.watermark_ms),
            self._timeline(new.events, new.watermark_ms),
        )
        self._store[customer_id] = new.to_stored()
        expiry = pending_expiry_ms(new.events, self._inactivity_days, new.watermark_ms)
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
        activity_mode = self._inactivity_days is not None
        for customer_id, arrived in by_customer.items():
            old = History.from_stored(self._store.get(customer_id))
            seen = old.seen()
            fresh = ordered_unique(e for e in arrived if e.event_id not in seen)
            outcome.duplicates += len(arrived) - len(fresh)
            outcome.applied += len(fresh)
            if not fresh:
                continue
            bare = [e.event_id for e in fresh if _never_matters(e, activity_mode)]
            mattering = [e for e in fresh if not _never_matters(e, activity_mode)]
            new = History(old.events, old.bare_ids + bare, watermark_ms)
            if not mattering:
                new.watermark_ms = old.watermark_ms
                self._store[customer_id] = new.to_stored()
                continue
            new.events = ordered_unique([*old.events, *mattering])
            _merge_deltas(outcome.deltas, self._update(customer_id, old, new))
        _merge_deltas(outcome.deltas, self.expire(watermark_ms))
        return outcome

    def expire(self, watermark_ms: int | None) -> Deltas:
        """Activity mode: apply the trailing expiries the watermark has now reached."""
        changes: Deltas = {}
        while watermark_ms is not None and self._expiries and self._expiries[0][0] <= watermark_ms:
            expiry, customer_id = heapq.heappop(self._expiries)
            old = History.from_stored(self._store.get(customer_id))
            if pending_expiry_ms(old.events, self._inactivity_days, old.watermark_ms) != expiry:
                continue  # stale: the history changed since this expiry was scheduled
            new = History(old.events, old.bare_ids, watermark_ms)
            _merge_deltas(changes, self._update(customer_id, old, new))
        return changes

    def rebuild_expiries(self) -> None:
        """After recovery: schedule the pending expiries of every stored customer."""
        self._expiries.clear()
        if self._inactivity_days is None:
            return
        for customer_id in list(self._store.keys()):
            history = History.from_stored(self._store.get(customer_id))
            expiry = pending_expiry_ms(history.events, self._inactivity_days, history.watermark_ms)
            if expiry is not None:
                self._expiries.append((expiry, customer_id))
        heapq.heapify(self._expiries)
