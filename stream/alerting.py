"""Spike alerts from the segment aggregates: per-dimension detectors fed at every flush.

The detectors (stream/spikes.py) are pure; this module keeps one per dimension, stores
their state in a mapping (a faust table in the worker) and gives each day record its
rolling_7d partner. No Kafka here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from datetime import datetime
from typing import Any

from stream import windows
from stream.aggregation import Aggregator
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


class SpikeAlerts:
    def __init__(self, store: MutableMapping[str, Any], config: SpikeConfig | None = None) -> None:
        self._store = store
        self._config = config
        self._detectors: dict[str, SpikeDetector] = {}

    def load(self, owned: Callable[[str], bool] = lambda dimension: True) -> None:
        """Restore the detectors of the dimensions this process owns from the store (after
        recovery or a rebalance); the others' scores are another worker's to expose."""
        self._detectors = {
            dimension: SpikeDetector.from_dict(state, self._config)
            for dimension, state in self._store.items()
            if owned(dimension)
        }

    def observe(self, dimension: str, emitted: Emitted, aggregator: Aggregator) -> list[SpikeAlert]:
        """Feed the day records of one dimension's flush; returns the alerts to publish."""
        by_key = dict(emitted)
        days = sorted(
            (record for record in by_key.values() if record["window"] == "day"),
            key=lambda record: str(record["window_start"]),
        )
        if not days:
            return []
        detector = self._detectors.setdefault(dimension, SpikeDetector(self._config))
        alerts: list[SpikeAlert] = []
        for day in days:
            alerts.extend(detector.observe_records(day, rolling_partner(day, by_key, aggregator)))
        self._store[dimension] = detector.to_dict()
        return alerts

    def scores(self) -> Iterator[tuple[str, str, str, float]]:
        for detector in list(self._detectors.values()):
            yield from detector.scores()
