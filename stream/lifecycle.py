"""One customer's lifecycle: its events replayed into a timeline of states. No I/O.

The timeline is a list of steps in time order; each step is the customer's state right
after an event that matters (it changes the state, activates, or is a purchase) or after
an inactivity expiry. Events that change nothing are not steps, so a timeline stays as
short as the customer's real history. The state "at a boundary b" is the state of the
last step strictly before b — see README "Metric definitions".
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from stream.events import EventType, LifecycleEvent
from stream.windows import DAY_MS

Segment = tuple[str | None, ...]
_ACTIVATING = frozenset({EventType.SUBSCRIBED, EventType.REACTIVATED})


class Step(NamedTuple):
    time_ms: int
    active: bool
    mrr_micros: int  # MRR in effect: latest mrr while active, 0 while inactive
    segment: Segment
    first_activation: bool | None  # None: no activation here; True: first-ever; False: later
    purchase_micros: int | None = None


_new_tuple = tuple.__new__


def _step(
    time_ms: int,
    active: bool,
    mrr_micros: int,
    segment: Segment,
    first_activation: bool | None,
    purchase_micros: int | None = None,
) -> Step:
    """A Step without the named tuple's Python-level __new__ (compiled callers otherwise
    run it in the interpreter, ~5,000 instructions a step)."""
    return _new_tuple(  # type: ignore[no-any-return]
        Step, (time_ms, active, mrr_micros, segment, first_activation, purchase_micros)
    )


class Timeline:
    """The steps of one customer plus the indexes window evaluation needs. A window is
    seen through (i0, i1): how many steps lie before its start and before its end; for
    step i the timeline knows the next activation / purchase at or after i, the purchases
    before i and the last step at the same instant, so evaluating a window is O(1)."""

    __slots__ = (
        "activation_next",
        "calendar",
        "days",
        "first_activation_index",
        "initial",
        "last_at_time",
        "purchase_amount",
        "purchase_count",
        "purchase_next",
        "purchases_folded",
        "steps",
        "times",
        "values",
    )

    def __init__(self, steps: list[Step], initial: Step, base: Base | None = None) -> None:
        self.steps = steps
        self.initial = initial
        self.times = times = [step.time_ms for step in steps]
        self.days = [time_ms // DAY_MS for time_ms in times]
        count = len(steps)
        activation_next = [count] * (count + 1)
        purchase_next = [count] * (count + 1)
        last_at_time = list(range(count))
        for i in range(count - 1, -1, -1):
            step = steps[i]
            activation_next[i] = i if step.first_activation is not None else activation_next[i + 1]
            purchase_next[i] = i if step.purchase_micros is not None else purchase_next[i + 1]
            if i + 1 < count and times[i + 1] == times[i]:
                last_at_time[i] = last_at_time[i + 1]
        purchase_count = [0] * (count + 1)
        purchase_amount = [0] * (count + 1)
        first_activation_index = None
        for i, step in enumerate(steps):
            micros = step.purchase_micros
            purchase_count[i + 1] = purchase_count[i] + (micros is not None)
            purchase_amount[i + 1] = purchase_amount[i] + (micros or 0)
            if step.first_activation and first_activation_index is None:
                first_activation_index = i
        self.activation_next = activation_next
        self.purchase_next = purchase_next
        self.last_at_time = last_at_time
        self.purchase_count = purchase_count
        self.purchase_amount = purchase_amount
        # A first activation folded into the base lies before every window evaluated
        # (README, Guarantees: the fold margin), so only a step can make a customer new.
        self.first_activation_index = first_activation_index
        self.purchases_folded = 0 if base is None else base.purchases
        # i0 * (len(steps) + 1) + i1 -> the contribution of (i0, i1), memoised
        self.values: dict[int, Any] = {}
        self.calendar: dict[Any, list[int]] = {}  # window kind -> window index of each step

    @property
    def final(self) -> Step:
        return self.steps[-1] if self.steps else self.initial

    def state_before(self, boundary_ms: int) -> Step:
        index = bisect_left(self.times, boundary_ms) - 1
        return self.steps[index] if index >= 0 else self.initial

    def first_difference_ms(self, other: Timeline) -> int | None:
        """The earliest time at which the two timelines differ (None if identical)."""
        for mine, theirs in zip(self.steps, other.steps, strict=False):
            if mine != theirs:
                return min(mine.time_ms, theirs.time_ms)
        if len(self.steps) == len(other.steps):
            return None
        longer = self.steps if len(self.steps) > len(other.steps) else other.steps
        return longer[min(len(self.steps), len(other.steps))].time_ms


def ordered_unique(events: Iterable[LifecycleEvent]) -> list[LifecycleEvent]:
    """Drop repeated event_ids (first seen wins) and sort by (time, event_id)."""
    seen: dict[str, LifecycleEvent] = {}
    for event in events:
        seen.setdefault(event.event_id, event)
    return sorted(seen.values(), key=lambda event: event.order_key)


def _activates(event: LifecycleEvent, active: bool, activity_mode: bool) -> bool:
    if active or event.type is EventType.CHURNED:
        return False
    return activity_mode or event.type in _ACTIVATING


@dataclass(frozen=True, slots=True)
class Base:
    """Everything the events before `time_ms` (folded away by retention) still decide."""

    time_ms: int
    active: bool
    latest_mrr: int
    segment: Segment
    first_activation_ms: int | None
    last_event_ms: int | None
    last_was_churn: bool
    purchases: int

    def to_list(self) -> list[Any]:
        return [
            self.time_ms,
            self.active,
            self.latest_mrr,
            list(self.segment),
            self.first_activation_ms,
            self.last_event_ms,
            self.last_was_churn,
            self.purchases,
        ]

    @classmethod
    def from_list(cls, values: list[Any]) -> Base:
        time_ms, active, mrr, segment, first, last, churn, purchases = values
        return cls(time_ms, active, mrr, tuple(segment), first, last, churn, purchases)


class Replay:
    """The lifecycle state machine (README, Lifecycle), one event at a time."""

    def __init__(
        self, dimension_count: int, inactivity_days: int | None, base: Base | None
    ) -> None:
        self.inactivity_ms = None if inactivity_days is None else inactivity_days * DAY_MS
        self.segment: list[str | None] = list(base.segment) if base else [None] * dimension_count
        self.active = base.active if base else False
        self.latest_mrr = base.latest_mrr if base else 0
        self.first_activation_ms = base.first_activation_ms if base else None
        self.last_event_ms = base.last_event_ms if base else None
        self.last_was_churn = base.last_was_churn if base else False
        self.purchases = base.purchases if base else 0
        # `segment` as a tuple, rebuilt only when it changes: the steps of one customer
        # share it, so comparing their segments mostly finds the same object
        self.current_segment: Segment = tuple(self.segment)
        self.state = _step(0, self.active, self.mrr, self.current_segment, None)

    @property
    def mrr(self) -> int:
        return self.latest_mrr if self.active else 0

    def expiry_ms(self) -> int | None:
        if self.inactivity_ms is None or not self.active or self.last_event_ms is None:
            return None
        return self.last_event_ms + self.inactivity_ms

    def advance_to(self, time_ms: int) -> Step | None:
        """Activity mode: the expiry step if the customer went inactive before `time_ms`."""
        expiry = self.expiry_ms()
        if expiry is not None and time_ms >= expiry:
            return self.expire(expiry)
        return None

    def expire(self, expiry_ms: int) -> Step:
        self.active = False
        self.state = _step(expiry_ms, False, 0, self.current_segment, None)
        return self.state

    def apply(self, event: LifecycleEvent) -> Step | None:
        """Apply one event (after `advance_to`); returns the new step, or None when nothing
        that matters changed."""
        moved = False
        for position, value in enumerate(event.segment):
            if value is not None and value != self.segment[position]:
                self.segment[position] = value
                moved = True
        if moved:
            self.current_segment = tuple(self.segment)
        if event.mrr_micros is not None:
            self.latest_mrr = event.mrr_micros
        first_activation: bool | None = None
        if _activates(event, self.active, self.inactivity_ms is not None):
            self.active = True
            first_activation = self.first_activation_ms is None
            if first_activation:
                self.first_activation_ms = event.time_ms
        elif event.type is EventType.CHURNED:
            self.active = False
        if event.amount_micros is not None:
            self.purchases += 1
        self.last_event_ms = event.time_ms
        self.last_was_churn = event.type is EventType.CHURNED
        active, mrr, segment = self.active, self.mrr, self.current_segment
        state = self.state
        if (
            active == state.active
            and mrr == state.mrr_micros
            and segment == state.segment
            and first_activation is None
            and event.amount_micros is None
        ):
            return None
        self.state = _step(
            event.time_ms, active, mrr, segment, first_activation, event.amount_micros
        )
        return self.state

    def base_at(self, time_ms: int) -> Base:
        self.advance_to(time_ms - 1)  # an expiry strictly before the cutoff is folded too
        return Base(
            time_ms,
            self.active,
            self.latest_mrr,
            tuple(self.segment),
            self.first_activation_ms,
            self.last_event_ms,
            self.last_was_churn,
            self.purchases,
        )


def build_timeline(
    events: Sequence[LifecycleEvent],
    dimension_count: int,
    inactivity_days: int | None,
    watermark_ms: int | None,
    base: Base | None = None,
) -> Timeline:
    """Replay `events` (already ordered and unique, all at or after `base`) into a timeline.

    In activity mode the trailing expiry (after the last event) is only part of the
    timeline once `watermark_ms` has reached it.
    """
    replay = Replay(dimension_count, inactivity_days, base)
    initial = replay.state
    steps: list[Step] = []
    for event in events:
        for step in (replay.advance_to(event.time_ms), replay.apply(event)):
            if step is not None:
                steps.append(step)
    expiry = replay.expiry_ms()
    if expiry is not None and watermark_ms is not None and expiry <= watermark_ms:
        steps.append(replay.expire(expiry))
    return Timeline(steps, initial, base)


def fold(
    base: Base | None,
    events: Sequence[LifecycleEvent],
    cutoff_ms: int,
    dimension_count: int,
    inactivity_days: int | None,
) -> Base:
    """The base at `cutoff_ms` after folding `events` (all before it) into `base`."""
    replay = Replay(dimension_count, inactivity_days, base)
    for event in events:
        replay.advance_to(event.time_ms)
        replay.apply(event)
    return replay.base_at(cutoff_ms)


def pending_expiry_ms(
    events: Sequence[LifecycleEvent],
    inactivity_days: int | None,
    watermark_ms: int | None,
    base: Base | None = None,
) -> int | None:
    """The trailing expiry the watermark has not reached yet, if any."""
    if inactivity_days is None:
        return None
    if events:
        last_ms, churned = events[-1].time_ms, events[-1].type is EventType.CHURNED
    elif base is not None and base.last_event_ms is not None and base.active:
        last_ms, churned = base.last_event_ms, base.last_was_churn
    else:
        return None
    if churned:
        return None
    expiry = last_ms + inactivity_days * DAY_MS
    if watermark_ms is not None and expiry <= watermark_ms:
        return None
    return expiry
