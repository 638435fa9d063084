"""A customer's contribution to every window, as a difference array over window indexes.

For one window kind, a customer's contribution to window k (README "Metric definitions", the
per-customer table) is piecewise constant in k: it can only change at a k where the
window's start or end crosses one of the customer's steps. So we evaluate it at those
candidate k's only and emit `contribution(k) - contribution(previous candidate)` there.
The aggregate of window k is then the prefix sum of all customers' differences up to k,
and a customer that never changes again keeps contributing to every later window without
being touched. No I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from stream import windows
from stream.formulas import ZERO, Counts, add, negate, subtract
from stream.lifecycle import Segment, Timeline

# (window kind name, window index, segment) -> difference of counts at that index
DeltaKey = tuple[str, int, Segment]
Deltas = dict[DeltaKey, Counts]


def _segment_for(timeline: Timeline, start: int, end: int, active_at_start: bool) -> Segment | None:
    """The segment at the window's reference instant (README, Segments)."""
    if active_at_start:
        return timeline.state_before(start).segment
    instant = timeline.first_activation_within(start, end)
    if instant is None:
        instant = timeline.first_purchase_within(start, end)
    if instant is None:
        return None
    return timeline.state_before(instant + 1).segment


def window_contribution(timeline: Timeline, start: int, end: int) -> tuple[Segment, Counts] | None:
    """The customer's counts for window [start, end) and the segment they go to."""
    before = timeline.state_before(start)
    after = timeline.state_before(end)
    segment = _segment_for(timeline, start, end, before.active)
    if segment is None:
        return None
    a0, a1 = before.active, after.active
    m0, m1 = before.mrr_micros, after.mrr_micros
    first = timeline.first_activation_ms
    new = first is not None and start <= first < end
    reactivated = not a0 and not new and timeline.first_activation_within(start, end) is not None
    churned = a0 and not a1
    both = a0 and a1
    purchases, amount = timeline.purchases_within(start, end)
    purchasing = purchases > 0
    repeat = purchasing and timeline.purchases_before(end) >= 2
    counts = (
        int(a0),
        int(a1),
        int(new),
        int(reactivated),
        int(churned),
        int(new and not a1),
        m0,
        m1,
        m0 if churned else 0,
        max(0, m1 - m0) if both else 0,
        max(0, m0 - m1) if both else 0,
        m1 if both else 0,
        m1 if new else 0,
        m1 if reactivated else 0,
        int(purchasing),
        purchases,
        amount,
        int(repeat),
    )
    return segment, counts


def candidate_indexes(timeline: Timeline, kind: windows.WindowKind, k_from: int) -> list[int]:
    """Window indexes >= k_from where the contribution may change: where a window's end or
    start crosses a step. Steps are visited newest first; once a step's start-crossing is
    before k_from, no older step can add a candidate."""
    candidates = {k_from}
    for time_ms in reversed(timeline.times):
        starting = windows.first_starting_after(kind, time_ms)
        if starting < k_from:
            break
        candidates.add(starting)
        ending = windows.first_ending_after(kind, time_ms)
        if ending >= k_from:
            candidates.add(ending)
    return sorted(candidates)


def _add_into(deltas: Deltas, key: DeltaKey, counts: Counts) -> None:
    previous = deltas.get(key)
    total = counts if previous is None else add(previous, counts)
    if any(total):
        deltas[key] = total
    else:
        deltas.pop(key, None)


def kind_deltas(
    timeline: Timeline, kind: windows.WindowKind, into: Deltas, k_from: int | None = None
) -> None:
    """Add the customer's differences at window indexes >= k_from (all when None)."""
    if k_from is None:
        if not timeline.times:
            return
        k_from = windows.first_ending_after(kind, timeline.times[0])
    previous = window_contribution(timeline, *windows.bounds(kind, k_from - 1))
    for k in candidate_indexes(timeline, kind, k_from):
        current = window_contribution(timeline, *windows.bounds(kind, k))
        if current == previous:
            continue
        if previous is not None:
            _add_into(into, (kind.name, k, previous[0]), negate(previous[1]))
        if current is not None:
            _add_into(into, (kind.name, k, current[0]), current[1])
        previous = current


def customer_deltas(
    timeline: Timeline, kinds: Iterable[windows.WindowKind] = windows.ALL_KINDS
) -> Deltas:
    """The customer's whole contribution, as differences keyed by (kind, k, segment)."""
    deltas: Deltas = {}
    for kind in kinds:
        kind_deltas(timeline, kind, deltas)
    return deltas


def changed_deltas(old: Timeline, new: Timeline) -> Deltas:
    """What to send when a customer's timeline changed from `old` to `new`: the difference
    of their difference arrays, computed only from the first window the change affects."""
    since = new.first_difference_ms(old)
    changes: Deltas = {}
    if since is None:
        return changes
    for kind in windows.ALL_KINDS:
        k_from = windows.first_ending_after(kind, since)
        old_part: Deltas = {}
        kind_deltas(old, kind, old_part, k_from)
        kind_deltas(new, kind, changes, k_from)
        for key, counts in old_part.items():
            _add_into(changes, key, negate(counts))
    return changes


def difference(new: Deltas, old: Deltas) -> Deltas:
    """new - old, without zero entries: what to send when a customer's history changed."""
    changed: Deltas = {}
    for key in new.keys() | old.keys():
        value = subtract(new.get(key, ZERO), old.get(key, ZERO))
        if any(value):
            changed[key] = value
    return changed
