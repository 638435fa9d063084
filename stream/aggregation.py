"""Per-segment window aggregates built from customers' difference arrays. No I/O.

The customer stage sends, per dimension, differences keyed by (kind, k, segment value).
`Aggregator` adds them into entries (one per dimension/kind/segment/k), idempotently
per source partition and offset, and on `flush` turns prefix sums into output records
for the windows whose counts or finality changed. Its durable state lives in three
mutable mappings (faust tables in the worker, dicts in tests): entries, meta, and a note
per emitted window of what was last emitted for it.

A flush's notes must be durable before its records are sent: a record whose note was lost
would stay the output's latest when the window's counts return to the older note's. Each
note carries the number of the flush that wrote it, so `load` knows the last flush of each
dimension, whose records a crash may have cut off, and emits them again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

from stream import windows
from stream.contributions import Deltas
from stream.formulas import ZERO, Counts, add
from stream.records import build_record, record_key

ALL: Final = "all"
UNKNOWN: Final = "unknown"
OTHER: Final = "other"

# (kind name, k, segment value) -> difference of counts
DimensionDeltas = dict[tuple[str, int, str], Counts]
_SEP: Final = "\x1f"


def by_dimension(deltas: Deltas, dimensions: tuple[str, ...]) -> dict[str, DimensionDeltas]:
    """Fan a customer-level difference array out to `all` and every configured dimension."""
    fanned: dict[str, DimensionDeltas] = {ALL: {}, **{name: {} for name in dimensions}}
    for (kind, k, segment), counts in deltas.items():
        _accumulate(fanned[ALL], (kind, k, ALL), counts)
        for position, name in enumerate(dimensions):
            value = segment[position]
            _accumulate(fanned[name], (kind, k, UNKNOWN if value is None else value), counts)
    return {
        name: {key: c for key, c in values.items() if any(c)} for name, values in fanned.items()
    }


def _accumulate(target: DimensionDeltas, key: tuple[str, int, str], counts: Counts) -> None:
    previous = target.get(key)
    target[key] = counts if previous is None else add(previous, counts)


@dataclass(slots=True)
class Series:
    """Differences of one (dimension, kind, segment) by window index."""

    deltas: dict[int, Counts] = field(default_factory=dict)
    dirty_from: int | None = None

    def mark(self, k: int) -> None:
        self.dirty_from = k if self.dirty_from is None else min(self.dirty_from, k)


@dataclass(slots=True)
class DimensionMeta:
    watermarks: dict[int, int] = field(default_factory=dict)  # input partition -> max time
    admitted: list[str] = field(default_factory=list)
    # customer partition -> the watermark its latest message carried: that partition's
    # events before it are all applied here (its messages carry its own view)
    sources: dict[int, int] = field(default_factory=dict)

    @property
    def watermark_ms(self) -> int | None:
        return min(self.watermarks.values()) if self.watermarks else None

    @property
    def applied_through_ms(self) -> int | None:
        """Event time before which the events of every customer partition heard from are
        applied: the slowest one's watermark. The watermark itself (the most advanced view
        of the input) may be ahead while a customer partition is behind."""
        return min(self.sources.values()) if self.sources else None

    @property
    def latest_event_ms(self) -> int | None:
        return max(self.watermarks.values()) if self.watermarks else None


class Aggregator:
    """Window aggregates of the dimensions this worker owns."""

    def __init__(
        self,
        entries: MutableMapping[str, Any],
        meta: MutableMapping[str, Any],
        emitted: MutableMapping[str, Any],
        *,
        grace_ms: int,
        max_segments: int,
    ) -> None:
        self._entries = entries
        self._meta_store = meta
        self._emitted = emitted
        self._grace_ms = grace_ms
        self._max_segments = max_segments
        self._series: dict[tuple[str, str, str], Series] = {}
        self._meta: dict[str, DimensionMeta] = {}
        self._final_through: dict[tuple[str, str], int] = {}  # (dimension, kind) -> k
        self._open_through: dict[tuple[str, str], int] = {}
        self._flushes: dict[str, int] = {}  # dimension -> number of its last flush with notes
        # notes of each dimension's last flush before a restart: its records may not all
        # have reached the output, so they are emitted again whatever the counts
        self._unconfirmed: set[str] = set()

    # -- loading ---------------------------------------------------------------------
    def load(self) -> None:
        """Rebuild the in-memory index from the durable mappings (after recovery)."""
        self._series.clear()
        self._meta.clear()
        for dimension, stored in self._meta_store.items():
            self._meta[dimension] = DimensionMeta(
                {int(p): int(t) for p, t in stored["wm"].items()},
                list(stored["admitted"]),
                {int(s): int(t) for s, t in stored.get("src", {}).items()},
            )
        for key, entry in self._entries.items():
            dimension, kind, segment, k = key.split(_SEP)
            series = self._series.setdefault((dimension, kind, segment), Series())
            series.deltas[int(k)] = tuple(entry["c"])
            series.mark(int(k))
        self._load_flushes()

    def _load_flushes(self) -> None:
        self._flushes.clear()
        last: dict[str, list[str]] = {}
        for key, note in self._emitted.items():
            dimension = key.split(_SEP, 1)[0]
            number = _flush_number(note)
            known = self._flushes.get(dimension)
            if known is None or number > known:
                self._flushes[dimension] = number
                last[dimension] = [key]
            elif number == known:
                last[dimension].append(key)
        self._unconfirmed = {key for keys in last.values() for key in keys}

    # -- applying --------------------------------------------------------------------
    def meta(self, dimension: str) -> DimensionMeta:
        return self._meta.setdefault(dimension, DimensionMeta())

    def _admit(self, dimension: str, value: str) -> str:
        if dimension == ALL:
            return value
        meta = self.meta(dimension)
        if value in meta.admitted or value in (UNKNOWN, OTHER):
            return value
        if len(meta.admitted) >= self._max_segments:
            return OTHER
        meta.admitted.append(value)
        return value

    def apply(
        self,
        dimension: str,
        source: int,
        offset: int,
        input_watermarks: Mapping[int, int],
        deltas: DimensionDeltas,
    ) -> int:
        """Apply one message from customer partition `source` at `offset`; returns how
        many entries changed (0 for a message already applied)."""
        meta = self.meta(dimension)
        for partition, time_ms in input_watermarks.items():
            meta.watermarks[partition] = max(meta.watermarks.get(partition, time_ms), time_ms)
        if input_watermarks:
            carried = min(input_watermarks.values())
            meta.sources[source] = max(meta.sources.get(source, carried), carried)
        merged: DimensionDeltas = {}
        for (kind, k, value), counts in deltas.items():
            _accumulate(merged, (kind, k, self._admit(dimension, value)), counts)
        changed = sum(
            self._apply_entry(dimension, key, counts, source, offset)
            for key, counts in merged.items()
        )
        self._meta_store[dimension] = {
            "wm": meta.watermarks,
            "admitted": meta.admitted,
            "src": meta.sources,
        }
        return changed

    def _apply_entry(
        self, dimension: str, key: tuple[str, int, str], counts: Counts, source: int, offset: int
    ) -> int:
        kind, k, value = key
        entry_key = _SEP.join((dimension, kind, value, str(k)))
        entry = self._entries.get(entry_key) or {"c": list(ZERO), "o": {}}
        if entry["o"].get(str(source), -1) >= offset:
            return 0
        total = add(tuple(entry["c"]), counts)
        self._entries[entry_key] = {"c": list(total), "o": {**entry["o"], str(source): offset}}
        series = self._series.setdefault((dimension, kind, value), Series())
        series.deltas[k] = total
        series.mark(k)
        return 1

    # -- reading ---------------------------------------------------------------------
    def window_counts(self, dimension: str, kind: str, segment: str, k: int) -> Counts:
        series = self._series.get((dimension, kind, segment))
        if series is None:
            return ZERO
        total = ZERO
        for index, counts in series.deltas.items():
            if index <= k:
                total = add(total, counts)
        return total

    def record(
        self, dimension: str, kind: windows.WindowKind, segment: str, k: int
    ) -> dict[str, object]:
        """The current record of one window (as flush would emit it, revision aside)."""
        meta = self.meta(dimension)
        watermark = meta.watermark_ms
        final = watermark is not None and windows.end_ms(kind, k) + self._grace_ms <= watermark
        counts = self.window_counts(dimension, kind.name, segment, k)
        return build_record(
            kind, k, dimension, segment, counts, final=final, revision=0, watermark_ms=watermark
        )

    def segments(self, dimension: str, kind: str) -> list[str]:
        return sorted(s for (d, kd, s) in self._series if d == dimension and kd == kind)

    def dimensions(self) -> list[str]:
        return sorted(self._meta)

    def open_window(self, dimension: str, kind: windows.WindowKind) -> int | None:
        """Index of the window of `kind` that contains the latest event time."""
        latest = self.meta(dimension).latest_event_ms
        return None if latest is None else windows.first_containing(kind, latest)

    # -- emitting --------------------------------------------------------------------
    def flush(
        self, dimensions: Iterable[str] | None = None
    ) -> Iterator[tuple[str, dict[str, object]]]:
        """Records (key, record) for every window whose counts or finality changed."""
        for dimension in list(self._meta) if dimensions is None else dimensions:
            if dimension in self._meta:
                yield from self._flush_dimension(dimension)

    def _flush_dimension(self, dimension: str) -> Iterator[tuple[str, dict[str, object]]]:
        meta = self.meta(dimension)
        watermark = meta.watermark_ms
        number = self._flushes.get(dimension, -1) + 1
        for kind in windows.ALL_KINDS:
            last = self.open_window(dimension, kind)
            if last is None:
                continue
            final_through = self._last_final(kind, watermark)
            previous_final = self._final_through.get((dimension, kind.name))
            previous_open = self._open_through.get((dimension, kind.name))
            for (series_dimension, kind_name, segment), series in self._series.items():
                if series_dimension != dimension or kind_name != kind.name or not series.deltas:
                    continue
                start = _flush_start(series, previous_final, final_through, previous_open, last)
                if start is None:
                    continue
                for emitted in self._emit_series(
                    dimension, kind, segment, series, start, last, final_through, watermark, number
                ):
                    self._flushes[dimension] = number
                    yield emitted
                series.dirty_from = None
            self._final_through[(dimension, kind.name)] = final_through
            self._open_through[(dimension, kind.name)] = last
        yield from self._emit_unconfirmed(dimension, watermark, number)

    def _emit_unconfirmed(
        self, dimension: str, watermark: int | None, number: int
    ) -> Iterator[tuple[str, dict[str, object]]]:
        """The records of the last flush before a restart that the windows above did not
        emit again (a window past the restored open one, a segment not restored yet)."""
        keys = sorted(key for key in self._unconfirmed if key.split(_SEP, 1)[0] == dimension)
        for key in keys:
            _, kind_name, segment, index = key.split(_SEP)
            kind, k = windows.KINDS_BY_NAME[kind_name], int(index)
            counts = self.window_counts(dimension, kind_name, segment, k)
            final = k <= self._last_final(kind, watermark)
            revision = self._emission(key, counts, final, number)
            if revision is None:  # (not reached: an unconfirmed note is always emitted)
                continue
            self._flushes[dimension] = number
            record = build_record(
                kind,
                k,
                dimension,
                segment,
                counts,
                final=final,
                revision=revision,
                watermark_ms=watermark,
            )
            yield record_key(kind_name, dimension, segment, windows.start_ms(kind, k)), record

    def _last_final(self, kind: windows.WindowKind, watermark: int | None) -> int:
        if watermark is None:
            return -(10**9)
        k = windows.first_containing(kind, watermark - self._grace_ms)
        # window k is final iff end(k) + grace <= watermark
        while windows.end_ms(kind, k) + self._grace_ms <= watermark:
            k += 1
        while windows.end_ms(kind, k - 1) + self._grace_ms > watermark:
            k -= 1
        return k - 1

    def _emit_series(
        self,
        dimension: str,
        kind: windows.WindowKind,
        segment: str,
        series: Series,
        start: int,
        last: int,
        final_through: int,
        watermark: int | None,
        number: int,
    ) -> Iterator[tuple[str, dict[str, object]]]:
        first = min(series.deltas)
        start = max(start, first)
        running = ZERO
        for index, counts in series.deltas.items():
            if index < start:
                running = add(running, counts)
        for k in range(start, last + 1):
            step = series.deltas.get(k)
            if step is not None:
                running = add(running, step)
            emission = self._emission(
                _emitted_key(dimension, kind.name, segment, k), running, k <= final_through, number
            )
            if emission is None:
                continue
            revision = emission
            record = build_record(
                kind,
                k,
                dimension,
                segment,
                running,
                final=k <= final_through,
                revision=revision,
                watermark_ms=watermark,
            )
            yield record_key(kind.name, dimension, segment, windows.start_ms(kind, k)), record

    def _emission(self, key: str, counts: Counts, final: bool, number: int) -> int | None:
        """The revision to emit with, or None if nothing changed since the last emission.
        The note (revision, finality, counts, flush number) is written here."""
        previous = self._emitted.get(key)
        if previous is None:
            if not any(counts):
                return None
            self._emitted[key] = [0, final, list(counts), number]
            return 0
        revision, was_final, was_counts = previous[0], previous[1], previous[2]
        unchanged = was_final == final and tuple(was_counts) == counts
        if unchanged and key not in self._unconfirmed:
            return None
        self._unconfirmed.discard(key)
        self._emitted[key] = [revision + 1, final, list(counts), number]
        return int(revision) + 1


def _emitted_key(dimension: str, kind: str, segment: str, k: int) -> str:
    return _SEP.join((dimension, kind, segment, str(k)))


def _flush_number(note: list[Any]) -> int:
    """The number of the flush that wrote a note (notes from before numbering: -1)."""
    return int(note[3]) if len(note) > 3 else -1


def _flush_start(
    series: Series,
    previous_final: int | None,
    final_through: int,
    previous_open: int | None,
    last: int,
) -> int | None:
    """The first window index of this series that may need re-emitting."""
    candidates = []
    if series.dirty_from is not None:
        candidates.append(series.dirty_from)
    if previous_final is None or final_through > previous_final:
        candidates.append(-(10**9) if previous_final is None else previous_final + 1)
    if previous_open is None or last > previous_open:
        candidates.append(-(10**9) if previous_open is None else previous_open + 1)
    return min(candidates) if candidates else None
