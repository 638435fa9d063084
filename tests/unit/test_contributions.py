"""The customer stage's incremental difference arrays equal a brute-force evaluation of
every window, whatever the old and new histories (hypothesis)."""

from __future__ import annotations

from bisect import bisect_left, bisect_right

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream import windows
from stream.contributions import (
    Deltas,
    DeltaSums,
    _calendar_candidates,
    _position,
    _rolling_candidates,
    changed_deltas,
    window_contribution,
)
from stream.events import EventType, LifecycleEvent
from stream.formulas import WIDTH
from stream.lifecycle import Timeline, build_timeline, ordered_unique

DAY = windows.DAY_MS
START = 20_454 * DAY  # 2026-01-01
TYPES = list(EventType)


@st.composite
def events(draw, prefix: str) -> list[LifecycleEvent]:
    drawn = []
    for number in range(draw(st.integers(0, 7))):
        kind = draw(st.sampled_from(TYPES))
        time_ms = START + draw(
            st.one_of(
                st.integers(0, 400 * DAY),
                st.integers(0, 400).map(lambda day: day * DAY),  # window edges
            )
        )
        mrr = (
            draw(st.sampled_from([None, 0, 10, 25])) if kind in ("subscribed", "renewed") else None
        )
        amount = draw(st.sampled_from([1, 7])) if kind == "purchase" else None
        segment = (draw(st.sampled_from([None, "a", "b"])),)
        drawn.append(LifecycleEvent("c", f"{prefix}{number}", kind, time_ms, mrr, amount, segment))
    return drawn


def brute_force(timeline: Timeline, lowest_day: int, highest_day: int) -> Deltas:
    """Difference arrays from evaluating every window index in a range that covers every
    step (before it: nothing; after it: constant)."""
    deltas: Deltas = {}
    for kind in windows.ALL_KINDS:
        low = windows.first_containing(kind, lowest_day * DAY) - 1
        high = windows.first_starting_after(kind, highest_day * DAY) + 1
        previous = None
        for k in range(low, high + 1):
            current = window_contribution(timeline, *windows.bounds(kind, k))
            for value, sign in ((current, 1), (previous, -1)):
                if value is not None:
                    key = (kind.name, k, value[0])
                    total = deltas.get(key, (0,) * 18)
                    deltas[key] = tuple(a + sign * b for a, b in zip(total, value[1], strict=True))
            previous = current
    return deltas


def subtract(new: Deltas, old: Deltas) -> Deltas:
    keys = new.keys() | old.keys()
    zero = (0,) * 18
    result = {
        key: tuple(a - b for a, b in zip(new.get(key, zero), old.get(key, zero), strict=True))
        for key in keys
    }
    return {key: value for key, value in result.items() if any(value)}


@settings(max_examples=300, deadline=None)
@given(
    earlier=events("old"),
    later=events("new"),
    inactivity_days=st.sampled_from([None, None, 20]),
    watermark_days=st.sampled_from([None, 100, 500]),
)
def test_incremental_change_equals_brute_force(earlier, later, inactivity_days, watermark_days):
    watermark = None if watermark_days is None else START + watermark_days * DAY
    old_events = ordered_unique(earlier)
    new_events = ordered_unique([*earlier, *later])
    old = build_timeline(old_events, 1, inactivity_days, watermark)
    new = build_timeline(new_events, 1, inactivity_days, watermark)
    days = [t // DAY for t in old.times + new.times] or [START // DAY]
    low, high = min(days), max(days)
    expected = subtract(brute_force(new, low, high), brute_force(old, low, high))
    sums = DeltaSums()
    changed_deltas(old, new, sums)
    assert sums.totals() == expected


def counts(*values: int) -> tuple[int, ...]:
    """A WIDTH-wide count tuple starting with `values`, the rest 0."""
    return values + (0,) * (WIDTH - len(values))


BIG = 2**62  # beyond a machine-sized int once doubled: the compiled sums must not overflow
KEY = ("month", 672, ("pro",))


@pytest.mark.parametrize(
    ("added", "subtracted", "expected"),
    [
        ([counts(1, 2)], [], {KEY: counts(1, 2)}),
        ([], [counts(1, 2)], {KEY: counts(-1, -2)}),
        ([counts(1, 2), counts(3, 4)], [counts(1, 1)], {KEY: counts(3, 5)}),
        ([counts(1, 2)], [counts(1, 2)], {}),  # cancelled: not sent
        ([counts()], [], {}),  # a lone contribution of zeros: not sent either
        ([counts(5), counts(-5)], [], {}),
        ([counts(BIG, -BIG), counts(BIG, -BIG)], [], {KEY: counts(2 * BIG, -2 * BIG)}),
        ([counts(*range(1, WIDTH + 1))], [counts(*range(WIDTH))], {KEY: counts(*[1] * WIDTH)}),
    ],
)
def test_delta_sums_add_up_field_by_field(added, subtracted, expected):
    sums = DeltaSums()
    for value in added:
        sums.add(KEY, value)
    for value in subtracted:
        sums.add(KEY, value, sign=-1)
    assert sums.totals() == expected


_count_tuples = st.lists(
    st.tuples(*[st.integers(-(2**63), 2**63) for _ in range(WIDTH)]), max_size=6
)


@settings(max_examples=200, deadline=None)
@given(added=_count_tuples, subtracted=_count_tuples)
def test_delta_sums_equal_summing_each_field(added, subtracted):
    sums = DeltaSums()
    for value in added:
        sums.add(KEY, value)
    for value in subtracted:
        sums.add(KEY, value, sign=-1)
    total = tuple(
        sum(value[i] for value in added) - sum(value[i] for value in subtracted)
        for i in range(WIDTH)
    )
    assert sums.totals() == ({KEY: total} if any(total) else {})


@given(values=st.lists(st.integers(-50, 50)).map(sorted), x=st.integers(-60, 60))
def test_position_is_the_bisect_modules(values, x):
    assert _position(values, x, False) == bisect_left(values, x)
    assert _position(values, x, True) == bisect_right(values, x)


@pytest.mark.parametrize(
    ("values", "x", "left", "right"),
    [
        ([], 5, 0, 0),
        ([5], 5, 0, 1),
        ([1, 5, 5, 5, 9], 5, 1, 4),
        ([1, 5, 9], 0, 0, 0),
        ([1, 5, 9], 10, 3, 3),
        ([20_454, 20_455, 20_455], 20_455, 1, 3),  # day numbers, as the timelines hold
    ],
)
def test_position_examples(values, x, left, right):
    assert (_position(values, x, False), _position(values, x, True)) == (left, right)


def calendar_candidates_by_set(old: list[int], new: list[int], k_from: int) -> list[int]:
    found = {k_from}
    found.update(k for window in (*old, *new) if window >= k_from for k in (window, window + 1))
    return sorted(found)


def rolling_candidates_by_set(
    old: list[int], new: list[int], length: int, k_from: int
) -> list[int]:
    found = {k_from}
    for day in (*old, *new):
        found.update(k for k in (day + 1, day + length + 1) if k >= k_from)
    return sorted(found)


_window_numbers = st.lists(st.integers(0, 40)).map(sorted)


@given(old=_window_numbers, new=_window_numbers, k_from=st.integers(-5, 45))
def test_calendar_candidates_are_every_step_window_and_the_next_from_k_from(old, new, k_from):
    assert _calendar_candidates(old, new, k_from) == calendar_candidates_by_set(old, new, k_from)


@given(
    old=_window_numbers,
    new=_window_numbers,
    length=st.sampled_from([1, 7, 30, 90]),
    k_from=st.integers(-5, 140),
)
def test_rolling_candidates_are_where_a_step_enters_or_leaves_from_k_from(old, new, length, k_from):
    expected = rolling_candidates_by_set(old, new, length, k_from)
    assert _rolling_candidates(old, new, length, k_from) == expected
