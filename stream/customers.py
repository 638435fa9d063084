"""The customer stage: per-customer histories and the differences they send. No I/O.

`CustomerStage.apply_batch` merges a batch of events into each customer's stored history
(deduplicating by event_id), recomputes the customer's contribution difference array and
returns only what changed. Histories live in a mutable mapping keyed by customer_id whose
values are bytes (a faust table in the worker, a dict in tests); each customer is read and
written at most once per batch.

Most events never change a metric (`activity`, bare `renewed`): for them only the event id
is stored, without decoding the rest of the history.
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson

from stream.contributions import Deltas, DeltaSums, changed_deltas
from stream.events import EVENT_TYPES, EventType, LifecycleEvent, compact_json
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


def event_to_row(event: LifecycleEvent) -> tuple[Any, ...]:
    """The wire form of an event on the customer-batch topic (a JSON array)."""
    return tuple(event)


def event_from_row(row: list[Any]) -> LifecycleEvent:
    customer_id, event_id, kind, time_ms, mrr, amount, segment = row
    return _new_event(
        LifecycleEvent,
        (customer_id, event_id, EVENT_TYPES[kind], time_ms, mrr, amount, tuple(segment)),
    )


_new_event = tuple.__new__  # a named tuple without its Python-level __new__


@dataclass(slots=True)
class BatchOutcome:
    deltas: Deltas
    applied: int = 0
    duplicates: int = 0
    beyond_retention: int = 0  # older than the retention horizon: counted, not applied


_BARE_TYPES = frozenset({EventType.ACTIVITY, EventType.RENEWED})


def _never_matters(event: LifecycleEvent, activity_mode: bool) -> bool:
    """Subscription mode: an activity or a bare renewal with no mrr and no dimension
    attribute can never change any metric, whatever arrives later; only its id is kept."""
    return (
        not activity_mode
        and event.type in _BARE_TYPES
        and event.mrr_micros is None
        and event.segment.count(None) == len(event.segment)
    )


class History:
    """A customer's stored history: the events that may matter (as rows without the
    customer id), the ids of the rest and, with retention, their times (ids stored while
    retention was off come first and have none), the watermark its contributions were last
    computed with, and the base that retention folded older events into.

    Stored as one JSON array; `rows` stay undecoded until an event that matters arrives.
    A plain class, not a dataclass: compiled, a dataclass's generated `__init__` stays an
    interpreted function, called several times per customer and batch."""

    __slots__ = ("bare_ids", "bare_times", "base", "rows", "watermark_ms")

    def __init__(
        self,
        rows: list[list[Any]],
        bare_ids: list[str],
        bare_times: list[int],
        watermark_ms: int | None,
        base: Base | None = None,
    ) -> None:
        self.rows = rows
        self.bare_ids = bare_ids
        self.bare_times = bare_times
        self.watermark_ms = watermark_ms
        self.base = base

    @classmethod
    def decode(cls, stored: bytes | None) -> History:
        if stored is None:
            return cls([], [], [], None)
        rows, bare_ids, bare_times, watermark, base = orjson.loads(stored)
        return cls(
            rows, bare_ids, bare_times, watermark, None if base is None else Base.from_list(base)
        )

    def encode(self) -> bytes:
        base = None if self.base is None else self.base.to_list()
        return compact_json([self.rows, self.bare_ids, self.bare_times, self.watermark_ms, base])

    def seen(self, event_id: str) -> bool:
        return event_id in self.bare_ids or any(row[0] == event_id for row in self.rows)

    def ids(self) -> set[str]:
        """Every stored event id: to check several arrived events against it, one scan
        of the history instead of one per event."""
        found = set(self.bare_ids)
        for row in self.rows:
            found.add(row[0])
        return found

    def events(self, customer_id: str) -> list[LifecycleEvent]:
        return [
            _new_event(
                LifecycleEvent,
                (customer_id, i, EVENT_TYPES[kind], t, mrr, amount, tuple(segment)),
            )
            for i, kind, t, mrr, amount, segment in self.rows
        ]

    def with_events(self, events: list[LifecycleEvent], watermark_ms: int | None) -> History:
        rows = [list(event[1:]) for event in events]
        return History(rows, self.bare_ids, self.bare_times, watermark_ms, self.base)


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

    def _timeline(self, events: list[LifecycleEvent], history: History) -> Timeline:
        return build_timeline(
            events,
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

    def _pruned(self, customer_id: str, history: History) -> History:
        """Fold what no accepted event can affect any more (README, Guarantees)."""
        oldest = self.oldest_accepted_ms(history.watermark_ms)
        if oldest is None:
            return history
        cutoff = oldest - FOLD_MARGIN_MS  # the longest window reaching back from `oldest`
        if history.base is not None and history.base.time_ms >= cutoff:
            return history
        folded_rows = [row for row in history.rows if row[2] < cutoff]
        if not folded_rows and not any(time_ms < cutoff for time_ms in history.bare_times):
            return history
        folded = History(folded_rows, [], [], None).events(customer_id)
        base = fold(history.base, folded, cutoff, self._dimension_count, self._inactivity_days)
        # Ids stored while retention was off have no time: they are the first ones, kept.
        untimed = len(history.bare_ids) - len(history.bare_times)
        kept = [i for i, time_ms in enumerate(history.bare_times) if time_ms >= cutoff]
        return History(
            [row for row in history.rows if row[2] >= cutoff],
            history.bare_ids[:untimed] + [history.bare_ids[untimed + i] for i in kept],
            [history.bare_times[i] for i in kept],
            history.watermark_ms,
            base,
        )

    def _bare_times(self, old: History, bare: list[LifecycleEvent]) -> list[int]:
        """Only retention reads a bare event's time. Without it the times would be about
        half the bytes of the bare events in a history, which is rewritten (and sent to
        the changelog) for every batch that brings the customer an event."""
        if self._retention_ms is None or not bare:
            return old.bare_times
        return old.bare_times + [e.time_ms for e in bare]

    def _store_history(self, customer_id: str, history: History) -> None:
        kept = self._pruned(customer_id, history)
        if self._retention_ms is None and kept.bare_times:
            # Stored while retention was on (or by a version that always kept the times).
            kept = History(kept.rows, kept.bare_ids, [], kept.watermark_ms, kept.base)
        self._store[customer_id] = kept.encode()

    def _update(
        self,
        customer_id: str,
        old: History,
        old_events: list[LifecycleEvent],
        new: History,
        new_events: list[LifecycleEvent],
        into: DeltaSums,
    ) -> None:
        changed_deltas(self._timeline(old_events, old), self._timeline(new_events, new), into)
        self._store_history(customer_id, new)
        expiry = pending_expiry_ms(new_events, self._inactivity_days, new.watermark_ms, new.base)
        if expiry is not None:
            heapq.heappush(self._expiries, (expiry, customer_id))

    def apply_batch(
        self, events: Iterable[LifecycleEvent], watermark_ms: int | None
    ) -> BatchOutcome:
        by_customer: dict[str, list[LifecycleEvent]] = {}
        for event in events:
            arrived = by_customer.get(event.customer_id)
            if arrived is None:
                by_customer[event.customer_id] = [event]
            else:
                arrived.append(event)
        outcome = BatchOutcome({})
        sums = DeltaSums()
        customer_ids = list(by_customer)
        for customer_id, stored in zip(customer_ids, self._read(customer_ids), strict=True):
            self._apply_customer(
                customer_id, stored, by_customer[customer_id], watermark_ms, outcome, sums
            )
        self._expire(watermark_ms, sums)
        outcome.deltas = sums.totals()
        return outcome

    def _fresh(self, history: History, arrived: list[LifecycleEvent]) -> list[LifecycleEvent]:
        """The arrived events not seen before (first seen wins)."""
        if len(arrived) == 1:
            return [] if history.seen(arrived[0].event_id) else arrived
        known = history.ids()
        fresh: list[LifecycleEvent] = []
        for event in arrived:
            if event.event_id not in known:
                known.add(event.event_id)
                fresh.append(event)
        return fresh

    def _read(self, customer_ids: list[str]) -> list[bytes | None]:
        """The stored histories, in one read where the store offers `get_many`: each
        customer is read once per batch, before any of the batch's writes."""
        get_many = getattr(self._store, "get_many", None)
        if get_many is not None:
            return get_many(customer_ids)  # type: ignore[no-any-return]
        return [self._store.get(customer_id) for customer_id in customer_ids]

    def _apply_customer(
        self,
        customer_id: str,
        stored: bytes | None,
        arrived: list[LifecycleEvent],
        watermark_ms: int | None,
        outcome: BatchOutcome,
        sums: DeltaSums,
    ) -> None:
        old = History.decode(stored)
        fresh = self._fresh(old, arrived)
        outcome.duplicates += len(arrived) - len(fresh)
        oldest = self.oldest_accepted_ms(watermark_ms)
        if oldest is not None:
            outcome.beyond_retention += sum(1 for e in fresh if e.time_ms < oldest)
            fresh = [e for e in fresh if e.time_ms >= oldest]
        outcome.applied += len(fresh)
        if not fresh:
            return
        activity_mode = self._inactivity_days is not None
        mattering = [e for e in fresh if not _never_matters(e, activity_mode)]
        bare = (
            [e for e in fresh if _never_matters(e, activity_mode)]
            if len(mattering) < len(fresh)
            else []
        )
        new = History(
            old.rows,
            old.bare_ids + [e.event_id for e in bare] if bare else old.bare_ids,
            self._bare_times(old, bare),
            old.watermark_ms,
            old.base,
        )
        if not mattering:
            self._store_history(customer_id, new)
            return
        old_events = old.events(customer_id)
        new_events = ordered_unique([*old_events, *mattering])
        new = new.with_events(new_events, watermark_ms)
        self._update(customer_id, old, old_events, new, new_events, sums)

    def _expire(self, watermark_ms: int | None, into: DeltaSums) -> None:
        """Activity mode: apply the trailing expiries the watermark has now reached."""
        while watermark_ms is not None and self._expiries and self._expiries[0][0] <= watermark_ms:
            expiry, customer_id = heapq.heappop(self._expiries)
            old = History.decode(self._store.get(customer_id))
            events = old.events(customer_id)
            pending = pending_expiry_ms(events, self._inactivity_days, old.watermark_ms, old.base)
            if pending != expiry:
                continue  # stale: the history changed since this expiry was scheduled
            new = History(old.rows, old.bare_ids, old.bare_times, watermark_ms, old.base)
            self._update(customer_id, old, events, new, events, into)

    def rebuild_expiries(self, stored: Iterable[tuple[str, bytes]] | None = None) -> None:
        """After recovery: schedule the pending expiries of every stored customer
        (`stored`: every (customer_id, history) held, by default the store's items)."""
        self._expiries.clear()
        if self._inactivity_days is None:
            return
        for customer_id, value in list(self._store.items() if stored is None else stored):
            history = History.decode(value)
            expiry = pending_expiry_ms(
                history.events(customer_id),
                self._inactivity_days,
                history.watermark_ms,
                history.base,
            )
            if expiry is not None:
                self._expiries.append((expiry, customer_id))
        heapq.heapify(self._expiries)
