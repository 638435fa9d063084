"""Event-time window arithmetic: integer window indexes and epoch-millisecond bounds.

Each window kind numbers its windows with an integer `k`; `bounds(kind, k)` gives the
half-open `[start_ms, end_ms)`. Calendar kinds number consecutive calendar periods;
rolling kinds number windows by the UTC day at whose end they close. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Final

DAY_MS: Final = 86_400_000
_EPOCH_WEEKDAY_OFFSET_DAYS: Final = 3  # 1970-01-01 was a Thursday; ISO weeks start Monday


@dataclass(frozen=True, slots=True, eq=False)  # singletons: identity hash, cheap in caches
class WindowKind:
    name: str
    rolling_days: int = 0  # 0 for calendar kinds

    @property
    def rolling(self) -> bool:
        return self.rolling_days > 0


DAY = WindowKind("day")
WEEK = WindowKind("week")
MONTH = WindowKind("month")
QUARTER = WindowKind("quarter")
YEAR = WindowKind("year")
ROLLING_7D = WindowKind("rolling_7d", 7)
ROLLING_30D = WindowKind("rolling_30d", 30)
ROLLING_90D = WindowKind("rolling_90d", 90)
ALL_KINDS: Final = (DAY, WEEK, MONTH, QUARTER, YEAR, ROLLING_7D, ROLLING_30D, ROLLING_90D)
KINDS_BY_NAME: Final = {kind.name: kind for kind in ALL_KINDS}


def _months_per_window(kind: WindowKind) -> int:
    return {"month": 1, "quarter": 3, "year": 12}[kind.name]


def _month_start_ms(month_number: int) -> int:
    """Start of a month counted as year * 12 + (month - 1)."""
    year, month_zero = divmod(month_number, 12)
    moment = datetime(year, month_zero + 1, 1, tzinfo=UTC)
    return int(moment.timestamp()) * 1000


def _month_number(time_ms: int) -> int:
    moment = datetime.fromtimestamp(time_ms // 1000, tz=UTC)
    return moment.year * 12 + moment.month - 1


@lru_cache(maxsize=1 << 16)
def start_ms(kind: WindowKind, k: int) -> int:
    if kind.rolling:
        return (k - kind.rolling_days) * DAY_MS
    if kind is DAY:
        return k * DAY_MS
    if kind is WEEK:
        return (7 * k - _EPOCH_WEEKDAY_OFFSET_DAYS) * DAY_MS
    return _month_start_ms(k * _months_per_window(kind))


@lru_cache(maxsize=1 << 16)
def end_ms(kind: WindowKind, k: int) -> int:
    if kind.rolling:
        return k * DAY_MS
    return start_ms(kind, k + 1)


def bounds(kind: WindowKind, k: int) -> tuple[int, int]:
    return start_ms(kind, k), end_ms(kind, k)


def window_days(kind: WindowKind, k: int) -> float:
    start, end = bounds(kind, k)
    return (end - start) / DAY_MS


def first_containing(kind: WindowKind, time_ms: int) -> int:
    """The smallest k whose window contains `time_ms` (the only one for calendar kinds)."""
    return _first_containing_day(kind, time_ms // DAY_MS)


@lru_cache(maxsize=1 << 16)
def _first_containing_day(kind: WindowKind, day: int) -> int:
    if kind.rolling:
        return day + 1
    if kind is DAY:
        return day
    if kind is WEEK:
        return (day + _EPOCH_WEEKDAY_OFFSET_DAYS) // 7
    return _month_number(day * DAY_MS) // _months_per_window(kind)


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
