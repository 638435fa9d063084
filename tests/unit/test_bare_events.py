"""Bare events (subscription mode: an activity, a renewal without mrr or attributes) are
stored as ids, with their times only while retention, the only reader of those times, is
on; ids stored without a time are kept when retention is switched on later."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from stream.customers import CustomerStage, History
from stream.decoding import decode_event
from stream.events import LifecycleEvent
from tests.builders import event

DIMENSIONS = ("plan",)
START = datetime(2024, 1, 1, tzinfo=UTC)
RETENTION_DAYS = 20


def _at(day: int) -> datetime:
    return START + timedelta(days=day)


def _ms(day: int) -> int:
    return int(_at(day).timestamp() * 1000)


def _event(kind: str, day: int, event_id: str) -> LifecycleEvent:
    fields: dict[str, Any] = {"event_id": event_id}
    if kind == "subscribed":
        fields |= {"mrr": 10, "attributes": {"plan": "pro"}}
    if kind == "purchase":
        fields["amount"] = 3
    return decode_event(event("c", kind, _at(day).isoformat(), **fields), DIMENSIONS)


def _apply(stage: CustomerStage, watermark_day: int, *specs: tuple[str, int, str]) -> Any:
    return stage.apply_batch([_event(*spec) for spec in specs], _ms(watermark_day))


def test_without_retention_only_the_ids_are_stored_and_still_deduplicate():
    store: dict[str, bytes] = {}
    stage = CustomerStage(store, DIMENSIONS, None)
    _apply(stage, 0, ("subscribed", 0, "s"))
    _apply(stage, 2, ("activity", 1, "a1"), ("renewed", 2, "r2"))
    _apply(stage, 3, ("purchase", 3, "p3"))
    stored = History.decode(store["c"])
    assert (stored.bare_ids, stored.bare_times) == (["a1", "r2"], [])
    again = _apply(stage, 3, ("activity", 1, "a1"), ("renewed", 2, "r2"))
    assert (again.applied, again.duplicates) == (0, 2)


def test_switching_retention_off_drops_the_stored_times():
    store: dict[str, bytes] = {}
    _apply(CustomerStage(store, DIMENSIONS, None, RETENTION_DAYS), 1, ("activity", 1, "a1"))
    assert History.decode(store["c"]).bare_times == [_ms(1)]
    _apply(CustomerStage(store, DIMENSIONS, None), 2, ("activity", 2, "a2"))
    stored = History.decode(store["c"])
    assert (stored.bare_ids, stored.bare_times) == (["a1", "a2"], [])


def test_ids_stored_without_retention_are_kept_when_it_is_switched_on():
    store: dict[str, bytes] = {}
    _apply(CustomerStage(store, DIMENSIONS, None), 1, ("subscribed", 0, "s"), ("activity", 1, "a1"))
    with_retention = CustomerStage(store, DIMENSIONS, None, RETENTION_DAYS)
    _apply(with_retention, 500, ("activity", 500, "a500"))
    _apply(with_retention, 800, ("activity", 800, "a800"))
    assert History.decode(store["c"]).bare_times == [_ms(500), _ms(800)]
    # A purchase moves the history's watermark to day 900: what is older than day
    # 900 - 20 - 367 = 513 is folded away, but a1's time is unknown, so a1 stays.
    _apply(with_retention, 900, ("purchase", 900, "p900"))
    stored = History.decode(store["c"])
    assert stored.base is not None
    assert (stored.bare_ids, stored.bare_times) == (["a1", "a800"], [_ms(800)])
    again = _apply(with_retention, 900, ("activity", 1, "a1"), ("activity", 890, "a890"))
    assert (again.duplicates, again.beyond_retention, again.applied) == (1, 0, 1)


def test_several_arrived_events_are_checked_against_stored_rows_ids_and_each_other():
    store: dict[str, bytes] = {}
    stage = CustomerStage(store, DIMENSIONS, None)
    _apply(stage, 1, ("subscribed", 0, "s"), ("activity", 1, "a1"))
    outcome = _apply(
        stage,
        5,
        ("purchase", 3, "p3"),
        ("subscribed", 0, "s"),  # a stored row
        ("activity", 1, "a1"),  # a stored bare id
        ("purchase", 3, "p3"),  # twice in the batch
        ("purchase", 4, "x"),  # the first of one id wins ...
        ("activity", 5, "x"),  # ... over a later one
        ("activity", 5, "a5"),
    )
    assert (outcome.applied, outcome.duplicates) == (3, 4)
    stored = History.decode(store["c"])
    assert [row[0] for row in stored.rows] == ["s", "p3", "x"]
    assert stored.bare_ids == ["a1", "a5"]
    assert stored.ids() == {"s", "p3", "x", "a1", "a5"}
