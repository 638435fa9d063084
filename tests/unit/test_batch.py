"""The offline reference implementation (`stream.batch`) against README "Metric definitions".

Every case is built from a handful of hand-made events and asserts exact values.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import random
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from stream.batch import compute_records, configure, enumerate_windows, read_events
from stream.events import EventType, LifecycleEvent, to_epoch_ms
from stream.formulas import COUNT_FIELDS, MONEY_FIELDS
from stream.records import MetricRecord

DIMS = ("plan", "region")
_ids = itertools.count()


def at(text: str) -> int:
    """Epoch ms of an ISO time; a bare date or a time without offset is UTC."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return to_epoch_ms(moment)


def ev(
    customer: str,
    kind: str,
    when: str,
    *,
    mrr: float | None = None,
    amount: float | None = None,
    plan: str | None = None,
    region: str | None = None,
    event_id: str | None = None,
) -> LifecycleEvent:
    return LifecycleEvent(
        customer_id=customer,
        event_id=event_id or f"e{next(_ids):06d}",
        type=EventType(kind),
        time_ms=at(when),
        mrr_micros=None if mrr is None else round(mrr * 1_000_000),
        amount_micros=None if amount is None else round(amount * 1_000_000),
        segment=(plan, region),
    )


def iso(day: str) -> str:
    return datetime.fromisoformat(day).replace(tzinfo=UTC).isoformat()


def find(
    records: list[dict[str, object]],
    window: str,
    start: str,
    dimension: str = "all",
    segment: str = "all",
) -> dict[str, object] | None:
    wanted = (window, iso(start), dimension, segment)
    found = [
        r
        for r in records
        if (r["window"], r["window_start"], r["dimension"], r["segment"]) == wanted
    ]
    assert len(found) <= 1
    return found[0] if found else None


def row(records: list[dict[str, object]], window: str, start: str, **key: str) -> dict:
    record = find(records, window, start, **key)
    assert record is not None, (window, start, key)
    return record


def counts_of(record: dict[str, object]) -> dict[str, object]:
    return {name: record[name] for name in COUNT_FIELDS}


def nonzero(record: dict[str, object]) -> dict[str, object]:
    return {name: value for name, value in counts_of(record).items() if value}


# --------------------------------------------------------------------------- worked examples


def cohort_churn(starting: int, churning: int, churn_day: str) -> list[LifecycleEvent]:
    events = [ev(f"c{i}", "subscribed", "2025-12-01", mrr=10) for i in range(starting)]
    events += [ev(f"c{i}", "churned", churn_day) for i in range(churning)]
    return events


def growth() -> list[LifecycleEvent]:
    events = cohort_churn(100, 10, "2026-01-15")
    events += [ev(f"n{i}", "subscribed", "2026-01-20", mrr=10) for i in range(30)]
    return events


def repeat_buyers() -> list[LifecycleEvent]:
    events = []
    for i in range(100):  # bought before the month and again in it
        events += [ev(f"a{i}", "purchase", "2025-12-10", amount=5)]
        events += [ev(f"a{i}", "purchase", "2026-01-10", amount=5)]
    for i in range(50):  # twice in the month
        events += [ev(f"b{i}", "purchase", "2026-01-03", amount=5)]
        events += [ev(f"b{i}", "purchase", "2026-01-04", amount=5)]
    events += [ev(f"s{i}", "purchase", "2026-01-12", amount=5) for i in range(350)]
    return events


WORKED_EXAMPLES = {
    "100 at month start, 5 churn": (
        lambda: cohort_churn(100, 5, "2026-01-20"),
        "month",
        "2026-01-01",
        {"customers_start": 100, "churned_customers": 5, "churn_rate": 0.05},
    ),
    "1000 and 50": (
        lambda: cohort_churn(1000, 50, "2026-01-20"),
        "month",
        "2026-01-01",
        {"customers_start": 1000, "churned_customers": 50, "churn_rate": 0.05},
    ),
    "500 at quarter start, 50 lost": (
        lambda: cohort_churn(500, 50, "2026-02-15"),
        "quarter",
        "2026-01-01",
        {"customers_start": 500, "churned_customers": 50, "churn_rate": 0.10},
    ),
    "100 start, 30 new, 10 lost, 120 end": (
        growth,
        "month",
        "2026-01-01",
        {
            "customers_start": 100,
            "new_customers": 30,
            "churned_customers": 10,
            "customers_end": 120,
            "retention_rate": 0.90,
            "net_growth_rate": 0.20,
        },
    ),
    "500 purchasers, 150 repeat": (
        repeat_buyers,
        "month",
        "2026-01-01",
        {
            "purchasing_customers": 500,
            "repeat_purchasers": 150,
            "purchases": 550,
            "repeat_purchase_rate": 0.30,
        },
    ),
}


@pytest.mark.parametrize(
    ("build", "window", "start", "expected"),
    WORKED_EXAMPLES.values(),
    ids=WORKED_EXAMPLES.keys(),
)
def test_worked_examples(build: Callable, window: str, start: str, expected: dict) -> None:
    record = row(compute_records(build(), DIMS), window, start)
    assert {name: record[name] for name in expected} == expected


def test_retention_identity_on_the_growth_example() -> None:
    record = row(compute_records(growth(), DIMS), "month", "2026-01-01")
    acquired_and_active = record["new_customers"] - record["new_customers_lost"]
    acquired_and_active += record["reactivated_customers"]
    retained = record["customers_end"] - acquired_and_active
    assert retained / record["customers_start"] == record["retention_rate"] == 0.9


# --------------------------------------------------------------------------- boundaries

BOUNDARY_CASES = {
    "subscription at 00:00 belongs to the window starting then": (
        [
            ev("a", "subscribed", "2026-01-10", mrr=10),
            ev("b", "subscribed", "2026-02-01T00:00:00Z", mrr=20),
        ],
        [
            ("month", "2026-01-01", {"customers_end": 1, "new_customers": 1}),
            ("month", "2026-02-01", {"customers_start": 1, "customers_end": 2}),
            ("day", "2026-02-01", {"customers_start": 1, "new_customers": 1}),
            ("day", "2026-01-31", {"customers_start": 1, "customers_end": 1}),
        ],
    ),
    "churn exactly at t1 counts in the next window": (
        [
            ev("a", "subscribed", "2026-01-10", mrr=10),
            ev("a", "churned", "2026-02-01T00:00:00Z"),
        ],
        [
            ("month", "2026-01-01", {"customers_end": 1, "churned_customers": 0}),
            ("month", "2026-02-01", {"customers_start": 1, "churned_customers": 1}),
            ("day", "2026-01-31", {"customers_end": 1, "churned_customers": 0}),
            ("day", "2026-02-01", {"customers_end": 0, "churned_customers": 1}),
            ("week", "2026-01-26", {"customers_end": 0, "churned_customers": 1}),
        ],
    ),
    "churn one millisecond before t1 stays in the window": (
        [
            ev("a", "subscribed", "2026-01-10", mrr=10),
            ev("a", "churned", "2026-01-31T23:59:59.999Z"),
        ],
        [("month", "2026-01-01", {"new_customers": 1, "new_customers_lost": 1})],
    ),
}


@pytest.mark.parametrize(("events", "checks"), BOUNDARY_CASES.values(), ids=BOUNDARY_CASES.keys())
def test_boundaries(events: list[LifecycleEvent], checks: list) -> None:
    records = compute_records(events, DIMS)
    for window, start, expected in checks:
        record = row(records, window, start)
        assert {name: record[name] for name in expected} == expected, (window, start)


def test_week_is_iso_monday_and_quarter_starts_in_january() -> None:
    records = compute_records([ev("a", "subscribed", "2026-01-01T12:00:00Z", mrr=1)], DIMS)
    starts = {r["window"]: r["window_start"] for r in records if r["dimension"] == "all"}
    assert starts["week"] == iso("2025-12-29")  # 2026-01-01 is a Thursday
    assert starts["quarter"] == iso("2026-01-01")
    assert starts["year"] == iso("2026-01-01")
    assert row(records, "week", "2025-12-29")["window_end"] == iso("2026-01-05")


WINDOW_ENUMERATIONS = {
    "day": ("day", "2026-01-30T05:00", "2026-02-01T00:00", 3, "2026-01-30", "2026-02-02"),
    "week": ("week", "2026-01-01", "2026-01-12", 3, "2025-12-29", "2026-01-19"),
    "month": ("month", "2025-11-15", "2026-02-01", 4, "2025-11-01", "2026-03-01"),
    "quarter": ("quarter", "2025-12-31", "2026-04-01", 3, "2025-10-01", "2026-07-01"),
    "year": ("year", "2025-06-01", "2026-01-01", 2, "2025-01-01", "2027-01-01"),
    "rolling_7d": ("rolling_7d", "2026-01-01T10:00", "2026-01-03", 3, "2025-12-26", "2026-01-04"),
    "rolling_90d": ("rolling_90d", "2026-01-01", "2026-01-01T23:00", 1, "2025-10-04", "2026-01-02"),
}


@pytest.mark.parametrize(
    ("kind", "first", "last", "count", "first_start", "last_end"),
    WINDOW_ENUMERATIONS.values(),
    ids=WINDOW_ENUMERATIONS.keys(),
)
def test_enumerate_windows(
    kind: str, first: str, last: str, count: int, first_start: str, last_end: str
) -> None:
    windows = enumerate_windows(kind, at(first), at(last))
    assert len(windows) == count
    assert windows[0][0] == at(first_start)
    assert windows[-1][1] == at(last_end)
    assert all(t0 < t1 for t0, t1 in windows)


def test_records_only_where_some_customer_contributes() -> None:
    events = [
        ev("a", "subscribed", "2026-01-05", mrr=10),
        ev("a", "churned", "2026-01-06"),
        ev("b", "purchase", "2026-03-10", amount=7),
    ]
    records = compute_records(events, DIMS)
    assert find(records, "month", "2026-02-01") is None
    assert find(records, "day", "2026-01-07") is None
    assert nonzero(row(records, "month", "2026-03-01")) == {
        "purchasing_customers": 1,
        "purchases": 1,
        "purchase_amount": 7.0,
    }
    assert {r["window_start"] for r in records if r["window"] == "month"} == {
        iso("2026-01-01"),
        iso("2026-03-01"),
    }


def test_output_is_sorted_by_window_dimension_segment_start() -> None:
    records = compute_records([*growth()[:50], ev("x", "purchase", "2026-03-01", amount=1)], DIMS)
    keys = [(r["window"], r["dimension"], r["segment"], r["window_start"]) for r in records]
    assert keys == sorted(keys)
    assert {r["revision"] for r in records} == {0}


# --------------------------------------------------------------------------- order, duplicates


def mixed_history() -> list[LifecycleEvent]:
    return [
        ev("a", "subscribed", "2026-01-03T08:00", mrr=10, plan="basic", region="eu"),
        ev("a", "plan_changed", "2026-01-20", mrr=25, plan="pro"),
        ev("a", "purchase", "2026-02-02", amount=3.5),
        ev("a", "churned", "2026-02-15"),
        ev("a", "reactivated", "2026-03-01T00:00", mrr=30),
        ev("b", "purchase", "2026-01-10", amount=12, region="us"),
        ev("b", "subscribed", "2026-01-31T23:00", mrr=50, plan="team"),
        ev("b", "renewed", "2026-03-02", mrr=45),
        ev("c", "activity", "2026-02-10", plan="basic"),
        ev("c", "purchase", "2026-02-11", amount=1),
        ev("c", "purchase", "2026-03-11", amount=2),
    ]


def test_out_of_order_input_gives_the_same_result() -> None:
    events = mixed_history()
    expected = compute_records(events, DIMS)
    for seed in range(5):
        shuffled = events[:]
        random.Random(seed).shuffle(shuffled)
        assert compute_records(shuffled, DIMS) == expected


def test_duplicates_change_nothing_and_the_first_one_seen_is_kept() -> None:
    events = mixed_history()
    expected = compute_records(events, DIMS)
    assert compute_records(events + events[::2] + events[:3], DIMS) == expected
    # A repeated event_id with other content is still a duplicate: ignored.
    impostor = ev("a", "churned", "2026-01-25", event_id=events[1].event_id)
    assert compute_records([*events, impostor], DIMS) == expected
    # ... and if it comes first, it is the one kept.
    changed = compute_records([impostor, *events], DIMS)
    assert row(changed, "month", "2026-01-01")["new_customers_lost"] == 1


# --------------------------------------------------------------------------- lifecycle fields

LIFECYCLE_CASES = {
    "new then lost in the same window": (
        [ev("a", "subscribed", "2026-01-05", mrr=10), ev("a", "churned", "2026-01-25")],
        "month",
        "2026-01-01",
        {"new_customers": 1, "new_customers_lost": 1},
    ),
    "churned before, back in the window: reactivated, not new": (
        [
            ev("a", "subscribed", "2025-12-05", mrr=10),
            ev("a", "churned", "2025-12-20"),
            ev("a", "reactivated", "2026-01-10", mrr=12),
        ],
        "month",
        "2026-01-01",
        {"customers_end": 1, "reactivated_customers": 1, "mrr_end": 12.0, "reactivation_mrr": 12.0},
    ),
    "new, churned and back in one window: new only (disjoint)": (
        [
            ev("a", "subscribed", "2026-01-02", mrr=10),
            ev("a", "churned", "2026-01-05"),
            ev("a", "reactivated", "2026-01-09", mrr=11),
        ],
        "month",
        "2026-01-01",
        {"customers_end": 1, "new_customers": 1, "mrr_end": 11.0, "new_mrr": 11.0},
    ),
    "active at start, churned and back: neither churned nor reactivated": (
        [
            ev("a", "subscribed", "2025-12-02", mrr=10),
            ev("a", "churned", "2026-01-05"),
            ev("a", "reactivated", "2026-01-09", mrr=10),
        ],
        "month",
        "2026-01-01",
        {
            "customers_start": 1,
            "customers_end": 1,
            "mrr_start": 10.0,
            "mrr_end": 10.0,
            "retained_mrr": 10.0,
        },
    ),
    "subscribed while active only updates mrr": (
        [
            ev("a", "subscribed", "2025-12-02", mrr=10),
            ev("a", "subscribed", "2026-01-05", mrr=15),
        ],
        "month",
        "2026-01-01",
        {
            "customers_start": 1,
            "customers_end": 1,
            "mrr_start": 10.0,
            "mrr_end": 15.0,
            "expansion_mrr": 5.0,
            "retained_mrr": 15.0,
        },
    ),
    "churned while inactive is a no-op, renewed does not activate": (
        [
            ev("a", "churned", "2026-01-03"),
            ev("a", "renewed", "2026-01-04", mrr=9),
            ev("a", "purchase", "2026-01-05", amount=2),
        ],
        "month",
        "2026-01-01",
        {"purchasing_customers": 1, "purchases": 1, "purchase_amount": 2.0},
    ),
    "mrr remembered while inactive applies again on return": (
        [
            ev("a", "subscribed", "2025-12-01", mrr=10),
            ev("a", "churned", "2025-12-10"),
            ev("a", "renewed", "2025-12-20", mrr=40),
            ev("a", "reactivated", "2026-01-03"),
        ],
        "month",
        "2026-01-01",
        {"customers_end": 1, "reactivated_customers": 1, "mrr_end": 40.0, "reactivation_mrr": 40.0},
    ),
}


@pytest.mark.parametrize(
    ("events", "window", "start", "expected"),
    LIFECYCLE_CASES.values(),
    ids=LIFECYCLE_CASES.keys(),
)
def test_lifecycle_contributions(
    events: list[LifecycleEvent], window: str, start: str, expected: dict
) -> None:
    assert nonzero(row(compute_records(events, DIMS), window, start)) == expected


def test_mrr_fields() -> None:
    events = [
        ev("expands", "subscribed", "2025-12-01", mrr=100),
        ev("expands", "plan_changed", "2026-01-10", mrr=150),
        ev("contracts", "subscribed", "2025-12-01", mrr=100),
        ev("contracts", "plan_changed", "2026-01-11", mrr=60),
        ev("churns", "subscribed", "2025-12-01", mrr=80),
        ev("churns", "churned", "2026-01-12"),
        ev("new", "subscribed", "2026-01-13", mrr=30),
        ev("returns", "subscribed", "2025-11-01", mrr=5),
        ev("returns", "churned", "2025-11-15"),
        ev("returns", "reactivated", "2026-01-14", mrr=40),
        ev("steady", "subscribed", "2025-12-01", mrr=20),
        ev("steady", "renewed", "2026-01-01", mrr=20),
    ]
    record = row(compute_records(events, DIMS), "month", "2026-01-01")
    assert counts_of(record) == {
        "customers_start": 4,
        "customers_end": 5,
        "new_customers": 1,
        "reactivated_customers": 1,
        "churned_customers": 1,
        "new_customers_lost": 0,
        "mrr_start": 300.0,
        "mrr_end": 300.0,
        "churned_mrr": 80.0,
        "expansion_mrr": 50.0,
        "contraction_mrr": 40.0,
        "retained_mrr": 230.0,
        "new_mrr": 30.0,
        "reactivation_mrr": 40.0,
        "purchasing_customers": 0,
        "purchases": 0,
        "purchase_amount": 0.0,
        "repeat_purchasers": 0,
    }
    assert record["gross_mrr_churn_rate"] == 120 / 300
    assert record["net_revenue_retention"] == 230 / 300
    assert record["churn_rate"] == 0.25


def test_money_sums_are_exact() -> None:
    events = [ev(f"c{i}", "purchase", "2026-01-05", amount=0.1) for i in range(10)]
    record = row(compute_records(events, DIMS), "day", "2026-01-05")
    assert record["purchase_amount"] == 1.0
    assert record["average_purchase_value"] == 0.1


# --------------------------------------------------------------------------- segments


def test_plan_change_mid_window_counts_in_the_segment_at_t0() -> None:
    events = [
        ev("a", "subscribed", "2025-12-01", mrr=10, plan="basic"),
        ev("a", "plan_changed", "2026-01-15", mrr=30, plan="pro"),
        ev("a", "renewed", "2026-01-20"),
    ]
    records = compute_records(events, DIMS)
    january = row(records, "month", "2026-01-01", dimension="plan", segment="basic")
    assert nonzero(january) == {
        "customers_start": 1,
        "customers_end": 1,
        "mrr_start": 10.0,
        "mrr_end": 30.0,
        "expansion_mrr": 20.0,
        "retained_mrr": 30.0,
    }
    assert find(records, "month", "2026-01-01", dimension="plan", segment="pro") is None
    assert find(records, "day", "2026-01-15", dimension="plan", segment="basic") is not None
    assert find(records, "day", "2026-01-16", dimension="plan", segment="pro") is not None
    assert find(records, "day", "2026-01-16", dimension="plan", segment="basic") is None
    # region was never set
    assert row(records, "month", "2026-01-01", dimension="region", segment="unknown")


REFERENCE_CASES = {
    "active at t0: segment just before t0": (
        [
            ev("a", "subscribed", "2025-12-01", mrr=1, plan="basic"),
            ev("a", "plan_changed", "2026-01-01T00:00", plan="pro"),
        ],
        "basic",
    ),
    "inactive at t0: segment just after the first activation": (
        [
            ev("a", "activity", "2026-01-02", plan="free"),
            ev("a", "subscribed", "2026-01-05", mrr=1, plan="basic"),
            ev("a", "plan_changed", "2026-01-06", plan="pro"),
        ],
        "basic",
    ),
    "purchase only: segment just after the first purchase in the window": (
        [
            ev("a", "activity", "2026-01-02", plan="free"),
            ev("a", "purchase", "2026-01-05", amount=1, plan="vip"),
        ],
        "vip",
    ),
    "attributes carried by an earlier event stay": (
        [
            ev("a", "activity", "2025-11-02", plan="team"),
            ev("a", "purchase", "2026-01-05", amount=1),
        ],
        "team",
    ),
}


@pytest.mark.parametrize(
    ("events", "segment"), REFERENCE_CASES.values(), ids=REFERENCE_CASES.keys()
)
def test_reference_instant_of_the_segment(events: list[LifecycleEvent], segment: str) -> None:
    records = compute_records(events, DIMS)
    plans = {
        r["segment"]
        for r in records
        if (r["window"], r["window_start"], r["dimension"]) == ("month", iso("2026-01-01"), "plan")
    }
    assert plans == {segment}


def test_segment_rows_sum_to_all() -> None:
    events = mixed_history() + growth()[:40]
    records = compute_records(events, DIMS)
    micros = {name: 1_000_000 if name in MONEY_FIELDS else 1 for name in COUNT_FIELDS}
    sums: dict[tuple, dict[str, list[int]]] = defaultdict(
        lambda: defaultdict(lambda: [0] * len(COUNT_FIELDS))
    )
    for record in records:
        key = (record["window"], record["window_start"])
        values = [round(record[name] * micros[name]) for name in COUNT_FIELDS]
        total = sums[key][record["dimension"]]
        sums[key][record["dimension"]] = [a + b for a, b in zip(total, values, strict=True)]
    assert sums
    for by_dimension in sums.values():
        assert by_dimension["plan"] == by_dimension["all"]
        assert by_dimension["region"] == by_dimension["all"]
    segments = {(r["dimension"], r["segment"]) for r in records}
    assert ("plan", "unknown") in segments
    assert ("region", "eu") in segments


def test_segment_cap_maps_later_values_to_other() -> None:
    events = [
        ev("a", "subscribed", "2026-01-02", mrr=1, plan="first"),
        ev("b", "subscribed", "2026-01-03", mrr=1, plan="second"),
        ev("c", "subscribed", "2026-01-04", mrr=1, plan="third"),
        ev("d", "subscribed", "2026-01-05", mrr=1),
    ]
    records = compute_records(events, DIMS, max_segments=1)
    plans = {
        r["segment"]: r["customers_end"]
        for r in records
        if (r["window"], r["dimension"]) == ("month", "plan")
    }
    assert plans == {"first": 1, "other": 2, "unknown": 1}


# --------------------------------------------------------------------------- activity mode


def test_activity_mode_expiry_and_return() -> None:
    events = [
        ev("a", "activity", "2026-01-01T10:00"),
        ev("a", "activity", "2026-01-20T08:00"),
        ev("b", "activity", "2026-02-28"),
    ]
    records = compute_records(events, DIMS, inactivity_days=10)
    assert nonzero(row(records, "day", "2026-01-11")) == {
        "customers_start": 1,
        "churned_customers": 1,
    }
    assert nonzero(row(records, "day", "2026-01-20")) == {
        "customers_end": 1,
        "reactivated_customers": 1,
    }
    january = row(records, "month", "2026-01-01")
    # New in January, so its return on the 20th is not a reactivation; gone again by the end.
    assert nonzero(january) == {"new_customers": 1, "new_customers_lost": 1}
    # The trailing expiry of a (Jan 30 08:00) is before the watermark (Feb 28): applied.
    assert nonzero(row(records, "day", "2026-01-30")) == {
        "customers_start": 1,
        "churned_customers": 1,
    }
    # In subscription mode activity never activates anybody.
    assert compute_records(events, DIMS) == []


def test_activity_mode_expiry_on_a_boundary_counts_in_the_next_window() -> None:
    # X = Jan 1 00:00 + 10 days = Jan 11 00:00, exactly the end of day Jan 10.
    events = [ev("a", "activity", "2026-01-01T00:00"), ev("a", "activity", "2026-01-12T08:00")]
    records = compute_records(events, DIMS, inactivity_days=10)
    assert nonzero(row(records, "day", "2026-01-10")) == {"customers_start": 1, "customers_end": 1}
    assert nonzero(row(records, "day", "2026-01-11")) == {
        "customers_start": 1,
        "churned_customers": 1,
    }
    assert nonzero(row(records, "day", "2026-01-12")) == {
        "customers_end": 1,
        "reactivated_customers": 1,
    }


def test_activity_mode_event_exactly_at_expiry_expires_and_returns_at_once() -> None:
    # X = Jan 11 10:00: the event at X finds the customer inactive and reactivates it in
    # the same instant, so every boundary sees it active: no window counts it as churned.
    events = [
        ev("a", "activity", "2026-01-01T10:00"),
        ev("a", "purchase", "2026-01-11T10:00", amount=1),
    ]
    records = compute_records(events, DIMS, inactivity_days=10)
    assert nonzero(row(records, "day", "2026-01-11")) == {
        "customers_start": 1,
        "customers_end": 1,
        "purchasing_customers": 1,
        "purchases": 1,
        "purchase_amount": 1.0,
    }
    assert sum(r["churned_customers"] + r["reactivated_customers"] for r in records) == 0


@pytest.mark.parametrize(
    ("watermark", "customers_end", "final"),
    [
        (None, 1, False),  # default: the latest event time, Jan 5 12:00
        ("2026-01-15T11:59:59.999Z", 1, False),
        ("2026-01-15T12:00:00Z", 0, False),  # X = Jan 15 12:00 <= watermark: expired
        ("2026-02-01T00:59:59.999Z", 0, False),
        ("2026-02-01T01:00:00Z", 0, True),  # window end + grace (3600 s)
    ],
)
def test_trailing_expiry_only_once_the_watermark_reaches_it(
    watermark: str | None, customers_end: int, final: bool
) -> None:
    events = [ev("a", "activity", "2026-01-01T09:00"), ev("a", "activity", "2026-01-05T12:00")]
    watermark_ms = None if watermark is None else at(watermark)
    records = compute_records(events, DIMS, inactivity_days=10, watermark_ms=watermark_ms)
    january = row(records, "month", "2026-01-01")
    assert january["customers_end"] == customers_end
    assert january["new_customers_lost"] == 1 - customers_end
    assert january["final"] is final
    expected_watermark = datetime.fromtimestamp(
        (watermark_ms or at("2026-01-05T12:00")) / 1000, tz=UTC
    ).isoformat()
    assert january["watermark"] == expected_watermark


def test_final_flag_uses_window_end_plus_grace() -> None:
    events = [
        ev("a", "subscribed", "2026-01-01T05:00", mrr=1),
        ev("a", "renewed", "2026-01-02T01:00"),
    ]
    records = compute_records(events, DIMS, grace_seconds=3600)
    assert row(records, "day", "2026-01-01")["final"] is True  # watermark == end + grace
    assert row(records, "day", "2026-01-02")["final"] is False
    shorter = compute_records(events, DIMS, grace_seconds=0)
    assert row(shorter, "day", "2026-01-01")["final"] is True
    longer = compute_records(events, DIMS, grace_seconds=3601)
    assert row(longer, "day", "2026-01-01")["final"] is False


# --------------------------------------------------------------------------- rolling windows


def test_rolling_window_membership() -> None:
    events = [
        ev("a", "subscribed", "2026-01-01T00:00", mrr=10),
        ev("a", "purchase", "2026-01-10T12:00", amount=4),
        ev("a", "renewed", "2026-01-20"),
    ]
    records = compute_records(events, DIMS)
    with_purchase = {
        r["window_start"]
        for r in records
        if r["window"] == "rolling_7d" and r["dimension"] == "all" and r["purchases"]
    }
    first = datetime(2026, 1, 4, tzinfo=UTC)  # [Jan 4, Jan 11) is the first to hold Jan 10
    assert with_purchase == {(first + timedelta(days=i)).isoformat() for i in range(7)}
    rolling = [r for r in records if r["window"] == "rolling_7d" and r["dimension"] == "all"]
    # one per day from the day of the earliest event to the day of the latest one
    assert [r["window_end"] for r in rolling] == [
        datetime(2026, 1, 2 + i, tzinfo=UTC).isoformat() for i in range(20)
    ]
    assert rolling[0]["window_start"] == iso("2025-12-26")
    assert nonzero(rolling[0]) == {
        "customers_end": 1,
        "new_customers": 1,
        "mrr_end": 10.0,
        "new_mrr": 10.0,
    }
    ninety = row(records, "rolling_90d", "2025-10-23")  # [Oct 23, Jan 21): everything
    thirty = row(records, "rolling_30d", "2025-12-22")  # [Dec 22, Jan 21): everything
    assert (
        nonzero(ninety)
        == nonzero(thirty)
        == {
            "customers_end": 1,
            "new_customers": 1,
            "mrr_end": 10.0,
            "new_mrr": 10.0,
            "purchasing_customers": 1,
            "purchases": 1,
            "purchase_amount": 4.0,
        }
    )
    assert ninety["window_end"] == iso("2026-01-21")


# --------------------------------------------------------------------------- file and CLI


def _lines(*events: dict) -> bytes:
    return b"".join(orjson.dumps(event) + b"\n" for event in events)


SAMPLE = [
    {
        "event_id": "1",
        "type": "subscribed",
        "customer_id": "a",
        "occurred_at": "2026-01-05T10:00:00Z",
        "mrr": 20,
        "attributes": {"plan": "pro"},
    },
    {
        "event_id": "2",
        "type": "purchase",
        "customer_id": "b",
        "occurred_at": "2026-01-06T10:00:00+02:00",
        "amount": 9.5,
    },
    {"event_id": "3", "type": "churned", "customer_id": "a", "occurred_at": "2026-01-07T00:00:00Z"},
]


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    body = _lines(SAMPLE[0]) + b"\n  \n" + b"{not json\n" + _lines(SAMPLE[1])
    body += _lines({"event_id": "x", "type": "teleported", "customer_id": "a"}) + _lines(SAMPLE[2])
    path.write_bytes(body)
    return path


def test_read_events_reports_invalid_lines(events_file: Path) -> None:
    events, invalid = read_events(events_file, ("plan",))
    assert [(e.customer_id, e.event_id) for e in events] == [("a", "1"), ("b", "2"), ("a", "3")]
    assert events[0].segment == ("pro",)
    assert events[1].time_ms == at("2026-01-06T08:00:00Z")
    assert invalid == [(4, "not_json"), (6, "unknown_type")]


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    handler = configure(parser)
    return handler(parser.parse_args(argv))


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DIMENSIONS", "INACTIVITY_DAYS", "GRACE_SECONDS", "MAX_SEGMENTS"):
        monkeypatch.delenv(f"CHURN_{name}", raising=False)


def test_cli_writes_json_lines(events_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.jsonl"
    assert run_cli([str(events_file), "--output", str(out), "--dimensions", "plan"]) == 0
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    events, _ = read_events(events_file, ("plan",))
    assert records == compute_records(events, ("plan",))
    assert (
        row(records, "day", "2026-01-07", dimension="plan", segment="pro")["churned_customers"] == 1
    )
    stderr = capsys.readouterr().err
    assert "2 invalid line(s)" in stderr
    assert "line 4: not_json" in stderr
    assert "line 6: unknown_type" in stderr


def test_cli_writes_csv_with_a_header(events_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    assert run_cli([str(events_file), "--output", str(out)]) == 0
    with out.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == list(MetricRecord.model_fields)
    events, _ = read_events(events_file, ())
    expected = compute_records(events, ())
    assert len(rows) == 1 + len(expected)
    first = dict(zip(rows[0], rows[1], strict=True))
    assert first["window"] == expected[0]["window"]
    assert first["final"] in {"true", "false"}
    assert first["churn_rate"] == ""  # null: nobody at the start
    assert {r[rows[0].index("dimension")] for r in rows[1:]} == {"all"}


def test_cli_defaults_to_stdout_and_honours_environment_and_watermark(
    events_file: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHURN_DIMENSIONS", "plan")
    monkeypatch.setenv("CHURN_GRACE_SECONDS", "0")
    assert run_cli([str(events_file), "--watermark", "2026-01-08T00:00:00Z"]) == 0
    records = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["dimension"] for r in records} == {"all", "plan"}
    assert {r["watermark"] for r in records} == {iso("2026-01-08")}
    assert row(records, "day", "2026-01-07")["final"] is True
    assert row(records, "month", "2026-01-01")["final"] is False


def test_cli_unreadable_file_exits_1(tmp_path: Path, capsys) -> None:
    assert run_cli([str(tmp_path / "missing.jsonl")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_cli_rejects_a_watermark_without_offset(events_file: Path) -> None:
    with pytest.raises(SystemExit):
        run_cli([str(events_file), "--watermark", "2026-01-08T00:00:00"])
