"""Spike alerts from the segment aggregates: per-dimension detectors fed at every flush.

The detectors (stream/spikes.py) are pure; this module keeps one per dimension, stores
their state in a mapping (a faust table in the worker) and gives each day record its
rolling_7d partner. No Kafka here.

A detector takes a segment's days in event-time order and treats a day as finished once a
later day is observed. So the days are fed up to the one that holds `applied_through_ms`:
the point every input partition has passed (the watermark) and up to which every customer
partition has applied its events (the slowest customer partition's watermark). That day is
the open day; every earlier one is complete, late events aside. Otherwise a partition that
runs ahead, as when a backlog or a replay is read a batch per partition at a time, or a
customer partition served before the others, would finish a day whose events are still on
their way, and a spike on it would be scored on part of its churn. Days reached this way
are read from the aggregator when they were emitted before (while held back) and have not
changed since.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from datetime import datetime
from typing import Any

from stream import windows
from stream.aggregation import Aggregator
from stream.records import record_key
from stream.spikes import SpikeAlert, SpikeConfig, SpikeDetector, rolling_7d_key

Emitted = list[tuple[str, dict[str, object]]]


def rolling_partner(
    day: Mapping[str, Any], emitted: Mapping[str, dict[str, object]], aggregator: Aggregator
) -> Mapping[str, Any]:
    """The rolling_7d record ending with `day`: as just emitted, else as it stands now."""
    key = rolling_7d_key(day)
    if key in emitted:
        return emitted[key]
    day_start_ms = round(datetime.fromisoformat(str(day["window_start"])).timestamp() * 1000)
    k = windows.first_containing(windows.ROLLING_7D, day_start_ms)  # ends with that day
    return aggregator.record(str(day["dimension"]), windows.ROLLING_7D, str(day["segment"]), k)


def _day_index(record: Mapping[str, Any]) -> int:
    start = datetime.fromisoformat(str(record["window_start"]))
    return round(start.timestamp() * 1000) // windows.DAY_MS


class SpikeAlerts:
    def __init__(self, store: MutableMapping[str, Any], config: SpikeConfig | None = None) -> None:
        self._store = store
        self._config = config
        self._detectors: dict[str, SpikeDetector] = {}
        self._through: dict[str, int] = {}  # dimension -> last day index fed so far

    def load(self, owned: Callable[[str], bool] = lambda dimension: True) -> None:
        """Restore the detectors of the dimensions this process owns from the store (after
        recovery or a rebalance); the others' scores are another worker's to expose."""
        self._detectors = {
            dimension: SpikeDetector.from_dict(state, self._config)
            for dimension, state in self._store.items()
            if owned(dimension)
        }
        self._through.clear()

    def observe(self, dimension: str, emitted: Emitted, aggregator: Aggregator) -> list[SpikeAlert]:
        """Feed one dimension's flush, up to the day that holds its applied-through point
        (see the module doc); returns the alerts to publish."""
        applied_through = aggregator.meta(dimension).applied_through_ms
        if applied_through is None:
            return []
        previous = self._through.get(dimension)
        through = windows.first_containing(windows.DAY, applied_through)
        through = through if previous is None else max(through, previous)
        detector = self._detectors.get(dimension) or SpikeDetector(self._config)
        by_key = dict(emitted)
        days: dict[str, Mapping[str, Any]] = {
            key: record
            for key, record in by_key.items()
            if record["window"] == "day" and _day_index(record) <= through
        }
        if previous is None or through > previous:
            days = self._reached(detector, dimension, previous, through, aggregator) | days
        self._through[dimension] = through
        if not days:
            return []
        self._detectors[dimension] = detector
        alerts: list[SpikeAlert] = []
        for day in sorted(days.values(), key=lambda record: str(record["window_start"])):
            alerts.extend(detector.observe_records(day, rolling_partner(day, by_key, aggregator)))
        self._store[dimension] = detector.to_dict()
        return alerts

    def _reached(
        self,
        detector: SpikeDetector,
        dimension: str,
        previous: int | None,
        through: int,
        aggregator: Aggregator,
    ) -> dict[str, Mapping[str, Any]]:
        """The day records, as they stand, of the days after `previous` up to `through`
        that a segment has data for and its detector has not seen yet."""
        oldest = through - detector.config.lookback_days
        found: dict[str, Mapping[str, Any]] = {}
        for segment in aggregator.segments(dimension, windows.DAY.name):
            latest_ms = detector.latest_day_ms(dimension, segment)
            first = max(oldest, -(10**9) if previous is None else previous + 1)
            if latest_ms is not None:
                first = max(first, latest_ms // windows.DAY_MS + 1)
            for k in range(first, through + 1):
                if any(aggregator.window_counts(dimension, windows.DAY.name, segment, k)):
                    key = record_key(windows.DAY.name, dimension, segment, k * windows.DAY_MS)
                    found[key] = aggregator.record(dimension, windows.DAY, segment, k)
        return found

    def scores(self) -> Iterator[tuple[str, str, str, float]]:
        for detector in list(self._detectors.values()):
            yield from detector.scores()
