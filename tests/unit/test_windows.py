"""Window arithmetic: indexes, half-open bounds, crossings (table-driven)."""

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream import windows
from stream.events import to_epoch_ms


def ms(*parts: int) -> int:
    return to_epoch_ms(datetime(*parts, tzinfo=UTC))


@pytest.mark.parametrize(
    ("kind", "moment", "start", "end"),
    [
        (windows.DAY, ms(2026, 3, 5, 13), ms(2026, 3, 5), ms(2026, 3, 6)),
        (windows.DAY, ms(2026, 3, 5), ms(2026, 3, 5), ms(2026, 3, 6)),
        (windows.WEEK, ms(2026, 11, 25, 12), ms(2026, 11, 23), ms(2026, 11, 30)),  # Wed -> Mon
        (windows.WEEK, ms(2026, 11, 23), ms(2026, 11, 23), ms(2026, 11, 30)),
        (windows.WEEK, ms(2026, 11, 29, 23, 59), ms(2026, 11, 23), ms(2026, 11, 30)),  # Sunday
        (windows.MONTH, ms(2024, 2, 29, 23), ms(2024, 2, 1), ms(2024, 3, 1)),
        (windows.MONTH, ms(2026, 12, 31, 23), ms(2026, 12, 1), ms(2027, 1, 1)),
        (windows.QUARTER, ms(2026, 5, 17), ms(2026, 4, 1), ms(2026, 7, 1)),
        (windows.QUARTER, ms(2026, 12, 31), ms(2026, 10, 1), ms(2027, 1, 1)),
        (windows.YEAR, ms(2026, 7, 1), ms(2026, 1, 1), ms(2027, 1, 1)),
        # rolling: the window ending at the end of the event's day is the first containing it
        (windows.ROLLING_7D, ms(2026, 3, 5, 13), ms(2026, 2, 27), ms(2026, 3, 6)),
        (windows.ROLLING_30D, ms(2026, 3, 5), ms(2026, 2, 4), ms(2026, 3, 6)),
    ],
)
def test_first_containing_window_bounds(kind, moment, start, end):
    k = windows.first_containing(kind, moment)
    assert windows.bounds(kind, k) == (start, end)


@pytest.mark.parametrize(
    ("kind", "days"),
    [(windows.ROLLING_7D, 7), (windows.ROLLING_30D, 30), (windows.ROLLING_90D, 90)],
)
def test_a_moment_lies_in_n_rolling_windows(kind, days):
    moment = ms(2026, 3, 5, 13)
    first, last = windows.first_containing(kind, moment), windows.last_containing(kind, moment)
    assert last - first + 1 == days
    for k in (first, last):
        start, end = windows.bounds(kind, k)
        assert start <= moment < end
    assert windows.bounds(kind, last + 1)[0] > moment
    assert windows.bounds(kind, first - 1)[1] <= moment


@pytest.mark.parametrize(
    ("kind", "k", "days"),
    [
        (windows.MONTH, windows.first_containing(windows.MONTH, ms(2024, 2, 10)), 29),
        (windows.MONTH, windows.first_containing(windows.MONTH, ms(2026, 1, 10)), 31),
        (windows.QUARTER, windows.first_containing(windows.QUARTER, ms(2026, 1, 10)), 90),
        (windows.YEAR, windows.first_containing(windows.YEAR, ms(2024, 1, 10)), 366),
        (windows.WEEK, 0, 7),
    ],
)
def test_window_days(kind, k, days):
    assert windows.window_days(kind, k) == days


@given(
    kind=st.sampled_from(windows.ALL_KINDS),
    moment=st.integers(min_value=ms(2000, 1, 1), max_value=ms(2100, 1, 1)),
)
def test_crossings_agree_with_bounds(kind, moment):
    """first_starting_after / first_ending_after are the smallest k past the moment."""
    k_start = windows.first_starting_after(kind, moment)
    assert windows.start_ms(kind, k_start) > moment >= windows.start_ms(kind, k_start - 1)
    k_end = windows.first_ending_after(kind, moment)
    assert windows.end_ms(kind, k_end) > moment >= windows.end_ms(kind, k_end - 1)
    assert windows.end_ms(kind, k_end) - windows.start_ms(kind, k_end) > 0


@given(kind=st.sampled_from(windows.ALL_KINDS), offset=st.integers(min_value=0, max_value=2_000))
def test_calendar_windows_tile_time(kind, offset):
    k = windows.first_containing(kind, ms(2000, 1, 1)) + offset
    if not kind.rolling:
        assert windows.end_ms(kind, k) == windows.start_ms(kind, k + 1)
    else:
        assert windows.end_ms(kind, k + 1) - windows.end_ms(kind, k) == windows.DAY_MS
