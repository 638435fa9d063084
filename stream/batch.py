"""`churn-stream batch`: the offline reference implementation of the churn metrics.

It reads a JSON Lines file of lifecycle events and computes every metric record of
README "Metric definitions" directly from the definitions, so that the streaming worker can be
cross-checked against it. It deliberately shares no logic with the worker: it imports
only the input contract (`stream.events`), the count fields (`stream.formulas`) and the
output shape (`stream.records.record_for_bounds`), and enumerates its own windows.

How it works, plainly:
1. De-duplicate events per customer (first `event_id` seen wins) and sort each customer's
   events by `(time_ms, event_id)`.
2. Replay each customer once (README "Metric definitions", "Lifecycle"), writing down a snapshot of
   its state after every *notable* instant (see `History`).
3. For every window `[t0, t1)` evaluate the customer's contribution straight from the
   table in README "Metric definitions": the state just before `t0` and just before `t1`, the
   activations and purchases inside the window, the segment at the reference instant.
4. Add the contributions up per (window, segment values), then per dimension.

Speed without cleverness: everything a contribution depends on is fixed by *which*
notable instants of the customer fall before `t0` and before `t1`, so windows with the same
pair of positions get the same contribution, evaluated once. Windows that end before a
customer's first event, or start after it is gone for good, are skipped.
"""

from __future__ import annotations

import argparse
import csv
import sys
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Final

import orjson

from stream.cli import add_settings_flags, settings_from
from stream.events import (
    EventType,
    InvalidEventError,
    LifecycleEvent,
    compact,
    parse_event,
    to_epoch_ms,
)
from stream.formulas import COUNT_FIELDS, Counts, add
from stream.records import MetricRecord, record_for_bounds

DAY_MS: Final = 86_400_000
ALL: Final = "all"
UNKNOWN: Final = "unknown"
OTHER: Final = "other"
ROLLING_DAYS: Final = {"rolling_7d": 7, "rolling_30d": 30, "rolling_90d": 90}
WINDOW_KINDS: Final = ("day", "week", "month", "quarter", "year", *ROLLING_DAYS)
SHOWN_INVALID_LINES: Final = 5
CSV_FIELDS: Final = tuple(MetricRecord.model_fields)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

# In subscription mode only these event types activate an inactive customer.
_SUBSCRIPTION_ACTIVATIONS: Final = frozenset({EventType.SUBSCRIBED, EventType.REACTIVATED})


# --------------------------------------------------------------------------- windows


def _ms(day: date) -> int:
    """Epoch milliseconds of 00:00 UTC of `day`."""
    return to_epoch_ms(datetime(day.year, day.month, day.day, tzinfo=UTC))


def _day_of(time_ms: int) -> date:
    return (_EPOCH + timedelta(milliseconds=time_ms)).date()


def _add_months(day: date, months: int) -> date:
    """The first day of the month `months` after the month of `day`."""
    index = day.year * 12 + (day.month - 1) + months
    return date(index // 12, index % 12 + 1, 1)


def _calendar_window(kind: str, day: date) -> tuple[date, date]:
    """The `[start, end)` dates of the calendar window of `kind` that contains `day`."""
    if kind == "day":
        return day, day + timedelta(days=1)
    if kind == "week":  # ISO week: Monday 00:00 to the next Monday
        monday = day - timedelta(days=day.weekday())
        return monday, monday + timedelta(days=7)
    if kind == "month":
        first = day.replace(day=1)
        return first, _add_months(first, 1)
    if kind == "quarter":  # Jan, Apr, Jul, Oct
        first = date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)
        return first, _add_months(first, 3)
    if kind == "year":
        return date(day.year, 1, 1), date(day.year + 1, 1, 1)
    raise ValueError(f"not a calendar window kind: {kind}")


def enumerate_windows(kind: str, first_ms: int, last_ms: int) -> list[tuple[int, int]]:
    """Every window of `kind`, as epoch-ms `(t0, t1)`, from the one containing `first_ms`
    to the one containing `last_ms` (rolling: from the one ending at the end of the first
    day to the one ending at the end of the last day)."""
    first_day, last_day = _day_of(first_ms), _day_of(last_ms)
    result: list[tuple[int, int]] = []
    if kind in ROLLING_DAYS:
        length = timedelta(days=ROLLING_DAYS[kind])
        day = first_day
        while day <= last_day:
            end = day + timedelta(days=1)
            result.append((_ms(end - length), _ms(end)))
            day = end
        return result
    start, end = _calendar_window(kind, first_day)
    while start <= last_day:
        result.append((_ms(start), _ms(end)))
        start, end = _calendar_window(kind, end)
    return result


# --------------------------------------------------------------------------- replay


@dataclass(frozen=True, slots=True)
class State:
    """A customer's state at one moment."""

    active: bool
    mrr: int  # MRR at this moment in micros: latest mrr while active, else 0
    segment: tuple[str, ...]  # segment label per configured dimension (capped)


@dataclass(slots=True)
class History:
    """One customer's replayed history.

    `times` are the ascending, distinct *notable* instants: those at which the state
    changes, an activation or a purchase happens, or an event finds or leaves the customer
    inactive (plus applied activity-mode expiries). `states[i]` is the state after
    everything at `times[i]`; between notable instants the state does not change. The
    events left out (e.g. `activity` or a same-price `renewed` of an active customer)
    change nothing any contribution depends on. Activations and purchases are also
    listed separately, in time order.
    """

    initial: State
    times: list[int]
    states: list[State]
    activation_times: list[int]
    activation_first: list[bool]  # is the activation at the same position first-ever?
    purchase_times: list[int]
    purchase_amounts: list[int]  # micros

    def state_before(self, instant: int) -> State:
        """After every event/expiry with time < instant, before any at exactly instant."""
        position = bisect_left(self.times, instant)
        return self.states[position - 1] if position else self.initial

    def state_after(self, instant: int) -> State:
        """After every event/expiry with time <= instant."""
        position = bisect_right(self.times, instant)
        return self.states[position - 1] if position else self.initial


def _inside(times: list[int], t0: int, t1: int) -> slice:
    """The positions of the ascending `times` that lie in `[t0, t1)`."""
    return slice(bisect_left(times, t0), bisect_left(times, t1))


class SegmentLabels:
    """Per dimension, the first `max_segments` values (in order of first appearance in
    the input) keep their name; later values become `other`; never set is `unknown`."""

    def __init__(self, events: Iterable[LifecycleEvent], width: int, max_segments: int) -> None:
        self._admitted: list[set[str]] = [set() for _ in range(width)]
        for event in events:
            for position, value in enumerate(event.segment):
                admitted = self._admitted[position]
                if value is not None and len(admitted) < max_segments:
                    admitted.add(value)

    def label(self, values: list[str | None]) -> tuple[str, ...]:
        return tuple(
            UNKNOWN if value is None else value if value in admitted else OTHER
            for value, admitted in zip(values, self._admitted, strict=True)
        )


def replay(
    events: list[LifecycleEvent],
    labels: SegmentLabels,
    width: int,
    inactivity_ms: int | None,
    watermark_ms: int,
) -> History:
    """Apply one customer's de-duplicated, sorted events (README, Lifecycle)."""
    values: list[str | None] = [None] * width
    active = False
    ever_activated = False
    latest_mrr = 0
    initial = State(False, 0, labels.label(values))
    history = History(initial, [], [], [], [], [], [])

    def snapshot(instant: int, notable: bool) -> None:
        state = State(active, latest_mrr if active else 0, labels.label(values))
        if not notable and state == (history.states[-1] if history.states else initial):
            return
        if history.times and history.times[-1] == instant:
            history.states[-1] = state
        else:
            history.times.append(instant)
            history.states.append(state)

    last_event_ms: int | None = None
    for event in events:
        # Activity mode: no event during [L, L + D) means inactive from X = L + D on.
        if inactivity_ms is not None and active and last_event_ms is not None:
            expiry = last_event_ms + inactivity_ms
            if event.time_ms >= expiry:
                active = False
                snapshot(expiry, notable=True)
        for position, value in enumerate(event.segment):
            if value is not None:
                values[position] = value
        if event.mrr_micros is not None:
            latest_mrr = event.mrr_micros
        activation = False
        if event.type is EventType.CHURNED:
            active = False
        elif not active and (inactivity_ms is not None or event.type in _SUBSCRIPTION_ACTIVATIONS):
            active = activation = True
            history.activation_times.append(event.time_ms)
            history.activation_first.append(not ever_activated)
            ever_activated = True
        purchase = event.type is EventType.PURCHASE
        if purchase:
            history.purchase_times.append(event.time_ms)
            history.purchase_amounts.append(event.amount_micros or 0)
        snapshot(event.time_ms, notable=activation or purchase or not active)
        last_event_ms = event.time_ms
    # The trailing expiry only happens once the watermark has reached it.
    if inactivity_ms is not None and active and last_event_ms is not None:
        expiry = last_event_ms + inactivity_ms
        if expiry <= watermark_ms:
            active = False
            snapshot(expiry, notable=True)
    return history


# --------------------------------------------------------------------------- contribution


def contribution(history: History, t0: int, t1: int) -> tuple[tuple[str, ...], Counts] | None:
    """The customer's segment and counts for window `[t0, t1)`, or None if it contributes
    nothing (README "Metric definitions", "Per-customer contribution")."""
    start, end = history.state_before(t0), history.state_before(t1)
    activations = _inside(history.activation_times, t0, t1)
    activation_times = history.activation_times[activations]
    purchases = history.purchase_amounts[_inside(history.purchase_times, t0, t1)]
    purchases_before_end = bisect_left(history.purchase_times, t1)
    purchase_times_inside = history.purchase_times[_inside(history.purchase_times, t0, t1)]

    # The segment is taken at the reference instant.
    if start.active:
        segment = start.segment
    elif activation_times:
        segment = history.state_after(activation_times[0]).segment
    elif purchase_times_inside:
        segment = history.state_after(purchase_times_inside[0]).segment
    else:
        return None

    a0, a1 = start.active, end.active
    m0, m1 = start.mrr, end.mrr
    new = any(history.activation_first[activations])
    reactivated = not a0 and not new and bool(activation_times)
    churned = a0 and not a1
    kept = a0 and a1
    purchasing = bool(purchases)
    values = {
        "customers_start": int(a0),
        "customers_end": int(a1),
        "new_customers": int(new),
        "reactivated_customers": int(reactivated),
        "churned_customers": int(churned),
        "new_customers_lost": int(new and not a1),
        "mrr_start": m0,
        "mrr_end": m1,
        "churned_mrr": m0 if churned else 0,
        "expansion_mrr": max(0, m1 - m0) if kept else 0,
        "contraction_mrr": max(0, m0 - m1) if kept else 0,
        "retained_mrr": m1 if kept else 0,
        "new_mrr": m1 if new else 0,
        "reactivation_mrr": m1 if reactivated else 0,
        "purchasing_customers": int(purchasing),
        "purchases": len(purchases),
        "purchase_amount": sum(purchases),
        "repeat_purchasers": int(purchasing and purchases_before_end >= 2),
    }
    counts = tuple(map(values.__getitem__, COUNT_FIELDS))
    if not any(counts):
        return None
    return segment, counts


# --------------------------------------------------------------------------- records


def _unique_events(events: Iterable[LifecycleEvent]) -> list[LifecycleEvent]:
    """Drop repeated `(customer_id, event_id)`: the first one seen is kept."""
    seen: set[tuple[str, str]] = set()
    unique: list[LifecycleEvent] = []
    for event in events:
        key = (event.customer_id, event.event_id)
        if key not in seen:
            seen.add(key)
            unique.append(event)
    return unique


def compute_records(
    events: Iterable[LifecycleEvent],
    dimensions: tuple[str, ...],
    inactivity_days: int | None = None,
    watermark_ms: int | None = None,
    grace_seconds: int = 3600,
    max_segments: int = 50,
) -> list[dict[str, object]]:
    """Every metric record of the events, sorted by (window, dimension, segment, start)."""
    unique = _unique_events(events)
    if not unique:
        return []
    width = len(dimensions)
    first_ms = min(event.time_ms for event in unique)
    last_ms = max(event.time_ms for event in unique)
    watermark = last_ms if watermark_ms is None else watermark_ms
    inactivity_ms = None if inactivity_days is None else inactivity_days * DAY_MS
    labels = SegmentLabels(unique, width, max_segments)

    by_customer: dict[str, list[LifecycleEvent]] = defaultdict(list)
    for event in unique:
        by_customer[event.customer_id].append(event)
    histories = [
        replay(
            sorted(customer_events, key=lambda e: e.order_key),
            labels,
            width,
            inactivity_ms,
            watermark,
        )
        for customer_events in by_customer.values()
    ]

    windows = {kind: enumerate_windows(kind, first_ms, last_ms) for kind in WINDOW_KINDS}
    # (kind, t0, t1, segment labels) -> the contributions of the customers in that cell
    cells: dict[tuple[str, int, int, tuple[str, ...]], list[Counts]] = defaultdict(list)
    for history in histories:
        _add_contributions(history, windows, cells)

    # Sum each cell, then roll the segment combinations up into one row per dimension.
    rows: dict[tuple[str, str, str, int, int], Counts] = {}
    for (kind, t0, t1, segment), contributions in cells.items():
        total = tuple(map(sum, zip(*contributions, strict=True)))
        for dimension, label in [(ALL, ALL), *zip(dimensions, segment, strict=True)]:
            row_key = (kind, dimension, label, t0, t1)
            rows[row_key] = add(rows[row_key], total) if row_key in rows else total

    grace_ms = grace_seconds * 1000
    return [
        record_for_bounds(
            kind,
            t0,
            t1,
            dimension,
            label,
            counts,
            final=watermark >= t1 + grace_ms,
            revision=0,
            watermark_ms=watermark,
        )
        for (kind, dimension, label, t0, t1), counts in sorted(rows.items())
        if any(counts)
    ]


def _window_end(window: tuple[int, int]) -> int:
    return window[1]


def _add_contributions(
    history: History,
    windows: dict[str, list[tuple[int, int]]],
    cells: dict[tuple[str, int, int, tuple[str, ...]], list[Counts]],
) -> None:
    """Append the customer's non-zero contribution to every window to its cell."""
    times = history.times
    if not times:
        return
    gone_after = None if history.states[-1].active else times[-1]
    # The contribution to [t0, t1) depends only on which of the customer's notable instants
    # fall before t0 and before t1, so it is evaluated once per such pair of positions.
    memo: dict[tuple[int, int], tuple[tuple[str, ...], Counts] | None] = {}
    for kind, bounds in windows.items():
        # Windows that end at or before the first event see a customer not there yet.
        arrival = bisect_right(bounds, times[0], key=_window_end)
        for t0, t1 in bounds[arrival:]:
            if gone_after is not None and t0 > gone_after:
                break  # nothing happens any more and the customer is gone for good
            key = (bisect_left(times, t0), bisect_left(times, t1))
            if key not in memo:
                memo[key] = contribution(history, t0, t1)
            found = memo[key]
            if found is not None:
                cells[kind, t0, t1, found[0]].append(found[1])


# --------------------------------------------------------------------------- input


def read_events(
    path: Path, dimensions: tuple[str, ...]
) -> tuple[list[LifecycleEvent], list[tuple[int, str]]]:
    """Events of a JSON Lines file, and the (line number, reason) of every invalid line."""
    events: list[LifecycleEvent] = []
    invalid: list[tuple[int, str]] = []
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            events.append(compact(parse_event(line.strip()), dimensions))
        except InvalidEventError as error:
            invalid.append((number, error.reason))
    return events, invalid


# --------------------------------------------------------------------------- output


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def write_records(records: list[dict[str, object]], output: Path | None) -> None:
    """JSON Lines to stdout or `output`; CSV (with a header) when `output` ends in .csv."""
    if output is not None and output.suffix.lower() == ".csv":
        with output.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_FIELDS)
            for record in records:
                writer.writerow(_csv_cell(record[name]) for name in CSV_FIELDS)
        return
    data = b"".join(orjson.dumps(record) + b"\n" for record in records)
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        output.write_bytes(data)


# --------------------------------------------------------------------------- CLI


def _rfc3339_ms(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"needs a UTC offset: {text!r}")
    return to_epoch_ms(moment)


def configure(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """Add the `batch` arguments to `parser` and return the handler."""
    parser.add_argument("file", metavar="FILE", type=Path, help="JSON Lines file of events.")
    parser.add_argument(
        "--output",
        metavar="OUT",
        type=Path,
        default=None,
        help="Write here instead of stdout; a .csv suffix writes CSV, else JSON Lines.",
    )
    parser.add_argument(
        "--watermark",
        metavar="RFC3339",
        type=_rfc3339_ms,
        default=None,
        help="Event-time watermark (default: the latest event time).",
    )
    add_settings_flags(parser)
    return run


def run(args: argparse.Namespace) -> int:
    """Read FILE, compute the records, write them; 1 if a file cannot be read/written."""
    settings = settings_from(args)
    try:
        events, invalid = read_events(args.file, settings.dimensions)
    except OSError as error:
        print(f"cannot read {args.file}: {error.strerror or error}", file=sys.stderr)
        return 1
    if invalid:
        print(f"{len(invalid)} invalid line(s) skipped:", file=sys.stderr)
        for number, reason in invalid[:SHOWN_INVALID_LINES]:
            print(f"  line {number}: {reason}", file=sys.stderr)
    records = compute_records(
        events,
        settings.dimensions,
        inactivity_days=settings.inactivity_days,
        watermark_ms=args.watermark,
        grace_seconds=settings.grace_seconds,
        max_segments=settings.max_segments,
    )
    try:
        write_records(records, args.output)
    except OSError as error:
        print(f"cannot write {args.output}: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0


__all__ = [
    "WINDOW_KINDS",
    "compute_records",
    "configure",
    "enumerate_windows",
    "read_events",
    "write_records",
]
