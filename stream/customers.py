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
from stream.lifecycle import (
    Base,
    Timeline,
    build_timeline,
    fold,
    ordered_unique,
    pending_expiry_ms,
)
from stream.windows import DAY_MS

# Retention keeps the events of this long before the oldest accepted time: the longest
# window (a leap year) reaching back from it must still see its true start state.
FOLD_MARGIN_MS = 367 * DAY_MS


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
    beyond_retention: int = 0  # older than the retention horizon: counted, not applied


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
    """A customer's stored history: the events that may matter, the ids (with times) of
    the rest, the watermark its contributions were last computed with, and the base that
    retention folded older events into."""

    events: list[LifecycleEvent]
    bare: list[tuple[int, str]]
    watermark_ms: int | None
    base: Base | None = None

    def seen(self) -> set[str]:
        return {event.event_id for event in self.events} | {event_id for _, event_id in self.bare}

    def to_stored(self) -> dict[str, Any]:
        return {
            "e": [event_to_row(e) for e in self.events],
            "i": [list(pair) for pair in self.bare],
            "w": self.watermark_ms,
            "b": None if self.base is None else self.base.to_list(),
        }

    @classmethod
    def from_stored(cls, stored: dict[str, Any] | None) -> History:
        if stored is None:
            return cls([], [], None)
        base = stored.get("b")
        return cls(
            [event_from_row(row) for row in stored["e"]],
            [(int(time_ms), event_id) for time_ms, event_id in stored["i"]],
            stored["w"],
            None if base is None else Base.from_list(base),
        )


class CustomerStage:
    """Histories of the customers of the partitions this worker owns."""

    def __init__(
        self,
        store: MutableMapping[str, Any],
        dimensions: tuple[str, ...],
        inactivity_days: int | None,
        retention_days: int | None = None,
    ) -> None:
        self._store = store
        self._dimension_count = len(dimensions)
        self._inactivity_days = inactivity_days
        self._retention_ms = None if retention_days is None else retention_days * DAY_MS
        self._expiries: list[tuple[int, str]] = []  # activity mode: (expiry, customer)

    def _timeline(self, history: History) -> Timeline:
        return build_timeline(
            history.events,
            self._dimension_count,
            self._inactivity_days,
            history.watermark_ms,
            history.base,
        )

    def oldest_accepted_ms(self, watermark_ms: int | None) -> int | None:
        """Events older than this are beyond retention: they can no longer be applied."""
        if self._retention_ms is None or watermark_ms is None:
            return None
        return watermark_ms - self._retention_ms

    def _pruned(self, history: History) -> History:
        """Fold what no accepted event can affect any more (README, Guarantees)."""
        oldest = self.oldest_accepted_ms(history.watermark_ms)
        if oldest is None:
            return history
        cutoff = oldest - FOLD_MARGIN_MS  # the longest window reaching back from `oldest`
        if history.base is not None and history.base.time_ms >= cutoff:
            return history
        folded = [e for e in history.events if e.time_ms < cutoff]
        if not folded and not any(time_ms < cutoff for time_ms, _ in history.bare):
            return history
        base = fold(history.base, folded, cutoff, self._dimension_count, self._inactivity_days)
        return History(
            [e for e in history.events if e.time_ms >= cutoff],
            [(time_ms, i) for time_ms, i in history.bare if time_ms >= cutoff],
            history.watermark_ms,
            base,
        )

    def _update(self, customer_id: str, old: History, new: History) -> Deltas:
        changes = changed_deltas(self._timeline(old), self._timeline(new))
        self._store[customer_id] = self._pruned(new).to_stored()
        expiry = pending_expiry_ms(new.events, self._inactivity_days, new.watermark_ms, new.base)
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
        oldest = self.oldest_accepted_ms(watermark_ms)
        for customer_id, arrived in by_customer.items():
            old = History.from_stored(self._store.get(customer_id))
            seen = old.seen()
            fresh = ordered_unique(e for e in arrived if e.event_id not in seen)
            outcome.duplicates += len(arrived) - len(fresh)
            if oldest is not None:
                outcome.beyond_retention += sum(1 for e in fresh if e.time_ms < oldest)
                fresh = [e for e in fresh if e.time_ms >= oldest]
            outcome.applied += len(fresh)
            if not fresh:
                continue
            bare = [(e.time_ms, e.event_id) for e in fresh if _never_matters(e, activity_mode)]
            mattering = [e for e in fresh if not _never_matters(e, activity_mode)]
            if not mattering:
                new = History(old.events, old.bare + bare, old.watermark_ms, old.base)
                self._store[customer_id] = self._pruned(new).to_stored()
                continue
            events = ordered_unique([*old.events, *mattering])
            new = History(events, old.bare + bare, watermark_ms, old.base)
            _merge_deltas(outcome.deltas, self._update(customer_id, old, new))
        _merge_deltas(outcome.deltas, self.expire(watermark_ms))
        return outcome

    def expire(self, watermark_ms: int | None) -> Deltas:
        """Activity mode: apply the trailing expiries the watermark has now reached."""
        changes: Deltas = {}
        while watermark_ms is not None and self._expiries and self._expiries[0][0] <= watermark_ms:
            expiry, customer_id = heapq.heappop(self._expiries)
            old = History.from_stored(self._store.get(customer_id))
            pending = pending_expiry_ms(
                old.events, self._inactivity_days, old.watermark_ms, old.base
            )
            if pending != expiry:
                continue  # stale: the history changed since this expiry was scheduled
            new = History(old.events, old.bare, watermark_ms, old.base)
            _merge_deltas(changes, self._update(customer_id, old, new))
        return changes

    def rebuild_expiries(self) -> None:
        """After recovery: schedule the pending expiries of every stored customer."""
        self._expiries.clear()
        if self._inactivity_days is None:
            return
        for customer_id in list(self._store.keys()):
            history = History.from_stored(self._store.get(customer_id))
            expiry = pending_expiry_ms(
                history.events, self._inactivity_days, history.watermark_ms, history.base
            )
            if expiry is not None:
                self._expiries.append((expiry, customer_id))
        heapq.heapify(self._expiries)
