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
from dataclasses import dataclass, field

from stream.events import EventType, LifecycleEvent
from stream.windows import DAY_MS

Segment = tuple[str | None, ...]
_ACTIVATING = frozenset({EventType.SUBSCRIBED, EventType.REACTIVATED})


@dataclass(frozen=True, slots=True)
class Step:
    time_ms: int
    active: bool
    mrr_micros: int  # MRR in effect: latest mrr while active, 0 while inactive
    segment: Segment
    first_activation: bool | None  # None: no activation here; True: first-ever; False: later
    purchase_micros: int | None = None


@dataclass(slots=True)
class Timeline:
    steps: list[Step]
    initial: Step
    times: list[int] = field(init=False)
    activation_times: list[int] = field(init=False)
    first_activation_ms: int | None = field(init=False)
    purchase_times: list[int] = field(init=False)
    purchase_amount_prefix: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.times = [step.time_ms for step in self.steps]
        self.activation_times = [s.time_ms for s in self.steps if s.first_activation is not None]
        firsts = [step.time_ms for step in self.steps if step.first_activation]
        self.first_activation_ms = firsts[0] if firsts else None
        self.purchase_times = []
        self.purchase_amount_prefix = [0]
        for step in self.steps:
            if step.purchase_micros is not None:
                self.purchase_times.append(step.time_ms)
                self.purchase_amount_prefix.append(
                    self.purchase_amount_prefix[-1] + step.purchase_micros
                )

    def state_before(self, boundary_ms: int) -> Step:
        index = bisect_left(self.times, boundary_ms) - 1
        return self.steps[index] if index >= 0 else self.initial

    def first_activation_within(self, start_ms: int, end_ms: int) -> int | None:
        position = bisect_left(self.activation_times, start_ms)
        if position < len(self.activation_times) and self.activation_times[position] < end_ms:
            return self.activation_times[position]
        return None

    def first_purchase_within(self, start_ms: int, end_ms: int) -> int | None:
        position = bisect_left(self.purchase_times, start_ms)
        if position < len(self.purchase_times) and self.purchase_times[position] < end_ms:
            return self.purchase_times[position]
        return None

    def purchases_within(self, start_ms: int, end_ms: int) -> tuple[int, int]:
        """(count, amount in micros) of purchases in [start, end)."""
        low = bisect_left(self.purchase_times, start_ms)
        high = bisect_left(self.purchase_times, end_ms)
        prefix = self.purchase_amount_prefix
        return high - low, prefix[high] - prefix[low]

    def purchases_before(self, boundary_ms: int) -> int:
        return bisect_left(self.purchase_times, boundary_ms)

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


def build_timeline(
    events: Sequence[LifecycleEvent],
    dimension_count: int,
    inactivity_days: int | None,
    watermark_ms: int | None,
) -> Timeline:
    """Replay `events` (already ordered and unique) into a timeline.

    In activity mode the trailing expiry (after the last event) is only part of the
    timeline once `watermark_ms` has reached it.
    """
    inactivity_ms = None if inactivity_days is None else inactivity_days * DAY_MS
    segment: list[str | None] = [None] * dimension_count
    initial = Step(0, False, 0, tuple(segment), None)
    steps: list[Step] = []
    state = initial
    active = ever_activated = False
    latest_mrr = 0
    last_time: int | None = None
    for event in events:
        if inactivity_ms is not None and active and last_time is not None:
            expiry = last_time + inactivity_ms
            if event.time_ms >= expiry:
                state = Step(expiry, False, 0, tuple(segment), None)
                steps.append(state)
                active = False
        for position, value in enumerate(event.segment):
            if value is not None:
                segment[position] = value
        if event.mrr_micros is not None:
            latest_mrr = event.mrr_micros
        first_activation: bool | None = None
        if _activates(event, active, inactivity_ms is not None):
            active = True
            first_activation = not ever_activated
            ever_activated = True
        elif event.type is EventType.CHURNED:
            active = False
        mrr = latest_mrr if active else 0
        changed = (active, mrr, tuple(segment)) != (state.active, state.mrr_micros, state.segment)
        if changed or first_activation is not None or event.amount_micros is not None:
            state = Step(
                event.time_ms, active, mrr, tuple(segment), first_activation, event.amount_micros
            )
            steps.append(state)
        last_time = event.time_ms
    if inactivity_ms is not None and active and last_time is not None:
        expiry = last_time + inactivity_ms
        if watermark_ms is not None and expiry <= watermark_ms:
            steps.append(Step(expiry, False, 0, tuple(segment), None))
    return Timeline(steps, initial)


def pending_expiry_ms(
    events: Sequence[LifecycleEvent], inactivity_days: int | None, watermark_ms: int | None
) -> int | None:
    """The trailing expiry the watermark has not reached yet, if any."""
    if inactivity_days is None or not events:
        return None
    last = events[-1]
    if last.type is EventType.CHURNED:
        return None
    expiry = last.time_ms + inactivity_days * DAY_MS
    if watermark_ms is not None and expiry <= watermark_ms:
        return None
    return expiry
