"""Event-time window arithmetic: integer window indexes and epoch-millisecond bounds.

Each window kind numbers its windows with an integer `k`; `bounds(kind, k)` gives the
half-open `[start_ms, end_ms)`. Calendar kinds number consecutive calendar periods;
rolling kinds number windows by the UTC day at whose end they close. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

DAY_MS: Final = 86_400_000
_EPOCH_WEEKDAY_OFFSET_DAYS: Final = 3  # 1970-01-01 was a Thursday; ISO weeks start Monday


@dataclass(frozen=True, slots=True, eq=False)  # singletons: identity hash, cheap in caches
class WindowKind:
    name: str
    rolling_days: int = 0  # 0 for calendar kinds
    months: int = 0  # calendar kinds made of whole months: 1, 3 or 12

    @property
    def rolling(self) -> bool:
        return self.rolling_days > 0


DAY = WindowKind("day")
WEEK = WindowKind("week")
MONTH = WindowKind("month", months=1)
QUARTER = WindowKind("quarter", months=3)
YEAR = WindowKind("year", months=12)
ROLLING_7D = WindowKind("rolling_7d", 7)
ROLLING_30D = WindowKind("rolling_30d", 30)
ROLLING_90D = WindowKind("rolling_90d", 90)
ALL_KINDS: Final = (DAY, WEEK, MONTH, QUARTER, YEAR, ROLLING_7D, ROLLING_30D, ROLLING_90D)
KINDS_BY_NAME: Final = {kind.name: kind for kind in ALL_KINDS}

# Month arithmetic is on the customer stage's hot path: memoised per day / month number.
_MONTH_OF_DAY: dict[int, int] = {}
_MONTH_START_MS: dict[int, int] = {}


def _month_start_ms(month_number: int) -> int:
    """Start of a month counted as year * 12 + (month - 1)."""
    start = _MONTH_START_MS.get(month_number)
    if start is None:
        year, month_zero = divmod(month_number, 12)
        start = int(datetime(year, month_zero + 1, 1, tzinfo=UTC).timestamp()) * 1000
        _MONTH_START_MS[month_number] = start
    return start


def _month_of_day(day: int) -> int:
    month = _MONTH_OF_DAY.get(day)
    if month is None:
        moment = datetime.fromtimestamp(day * 86_400, tz=UTC)
        month = _MONTH_OF_DAY[day] = moment.year * 12 + moment.month - 1
    return month


def calendar_index(kind: WindowKind, day: int) -> int:
    """The index of the calendar window of `kind` containing UTC day number `day`."""
    if kind is DAY:
        return day
    if kind is WEEK:
        return (day + _EPOCH_WEEKDAY_OFFSET_DAYS) // 7
    return _month_of_day(day) // kind.months


def bounds(kind: WindowKind, k: int) -> tuple[int, int]:
    """The half-open `[start_ms, end_ms)` of window k."""
    if kind.rolling_days:
        return (k - kind.rolling_days) * DAY_MS, k * DAY_MS
    if kind is DAY:
        return k * DAY_MS, (k + 1) * DAY_MS
    if kind is WEEK:
        start = (7 * k - _EPOCH_WEEKDAY_OFFSET_DAYS) * DAY_MS
        return start, start + 7 * DAY_MS
    return _month_start_ms(k * kind.months), _month_start_ms((k + 1) * kind.months)


def start_ms(kind: WindowKind, k: int) -> int:
    return bounds(kind, k)[0]


def end_ms(kind: WindowKind, k: int) -> int:
    return bounds(kind, k)[1]


def window_days(kind: WindowKind, k: int) -> float:
    start, end = bounds(kind, k)
    return (end - start) / DAY_MS


def first_containing(kind: WindowKind, time_ms: int) -> int:
    """The smallest k whose window contains `time_ms` (the only one for calendar kinds)."""
    day = time_ms // DAY_MS
    if kind.rolling_days:
        return day + 1
    return calendar_index(kind, day)


def last_containing(kind: WindowKind, time_ms: int) -> int:
    """The largest k whose window contains `time_ms`."""
    if kind.rolling:
        return time_ms // DAY_MS + kind.rolling_days
    return first_containing(kind, time_ms)


def first_starting_after(kind: WindowKind, time_ms: int) -> int:
    """The smallest k with start_ms(k) > time_ms: the first window whose start state
    reflects a change at `time_ms`."""
    return last_containing(kind, time_ms) + 1


def first_ending_after(kind: WindowKind, time_ms: int) -> int:
    """The smallest k with end_ms(k) > time_ms: the first window whose end state
    reflects a change at `time_ms`."""
    return first_containing(kind, time_ms)
