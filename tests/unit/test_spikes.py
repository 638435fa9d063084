"""The churn spike detector: scores, baseline, alert state machine, state round trip, and a
simulated spike found in the records of the in-memory pipeline (and nothing without it)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime

import orjson
import pytest
from pydantic import ValidationError

from stream.local_pipeline import LocalPipeline
from stream.simulator import DAY_MS, SimulationConfig, Spike, generate_events
from stream.spikes import (
    Observation,
    SpikeAlert,
    SpikeConfig,
    SpikeDetector,
    _gamma_p,
    learn_baseline,
    poisson_score,
    rolling_7d_key,
)

START_DAY = 20_454  # 2026-01-01
BASE = 1000
CYCLE = (4, 6, 5, 3, 7, 5, 5)  # a calm week of churned customers: mean 5 a day on 1,000


# --------------------------------------------------------------------------- statistics


def _poisson_cdf_below(k: int, mean: float) -> float:
    return sum(math.exp(i * math.log(mean) - mean - math.lgamma(i + 1)) for i in range(k))


@pytest.mark.parametrize(
    ("k", "mean"), [(1, 0.5), (3, 2.0), (10, 4.0), (25, 20.0), (60, 40.0), (200, 150.0)]
)
def test_gamma_p_is_the_poisson_upper_tail(k, mean):
    assert _gamma_p(k, mean) == pytest.approx(1 - _poisson_cdf_below(k, mean), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(
    ("observed", "expected", "dispersion", "low", "high"),
    [
        (5, 5, 1, -0.3, 0.3),  # what was expected: about 0
        (100, 100, 1, -0.2, 0.2),
        (0, 5, 1, -3.0, -1.5),  # fewer than expected: negative
        (140, 100, 1, 3.6, 4.0),  # large counts: close to (o - e) / sqrt(e) = 4
        (20, 5, 1, 4.5, 5.5),  # small counts: far less than (20 - 5) / sqrt(5) = 6.7
        (20, 5, 4, 2.0, 3.0),  # overdispersion widens the distribution
        (12_000, 10_000, 1, 19.9, 20.1),  # the normal approximation for big counts
        (10**6, 0.5, 1, 30.0, 40.0),  # bounded
    ],
)
def test_poisson_score_table(observed, expected, dispersion, low, high):
    assert low <= poisson_score(observed, expected, dispersion) <= high


def test_poisson_score_grows_with_the_observed_count():
    scores = [poisson_score(k, 6.0) for k in range(40)]
    assert scores == sorted(scores)
    assert len(set(scores)) == len(scores)


@pytest.mark.parametrize(
    "overrides",
    [
        {"warning_score": 5, "critical_score": 4},
        {"resolve_score": 4},
        {"warmup_days": 60, "lookback_days": 56},
        {"min_customers": 0},
        {"unknown": 1},
    ],
)
def test_inconsistent_configs_are_refused(overrides):
    with pytest.raises(ValidationError):
        SpikeConfig(**overrides)


# --------------------------------------------------------------------------- baseline


def _calm_series(days: int, base: int = BASE) -> dict[int, Observation]:
    series = {}
    for offset in range(days):
        churned = CYCLE[offset % 7]
        rolling = sum(CYCLE) / base if offset >= 6 else None
        series[START_DAY + offset] = Observation(churned, base, rolling)
    return series


def test_baseline_needs_the_warmup_and_ignores_small_days():
    config = SpikeConfig()
    series = _calm_series(30)
    assert learn_baseline(series, START_DAY + 13, "day", config) is None
    baseline = learn_baseline(series, START_DAY + 14, "day", config)
    assert baseline is not None and baseline.days == 14
    assert baseline.mean == pytest.approx(0.005, rel=0.05)
    small = {day: replace(obs, customers_start=49) for day, obs in series.items()}
    assert learn_baseline(small, START_DAY + 29, "day", config) is None


def test_baseline_is_robust_to_a_spike_it_has_seen():
    config = SpikeConfig()
    series = _calm_series(40)
    before = learn_baseline(series, START_DAY + 30, "day", config)
    series[START_DAY + 30] = Observation(200, BASE, None)  # 40 x the usual
    after = learn_baseline(series, START_DAY + 31, "day", config)
    assert before is not None and after is not None
    assert after.mean < before.mean * 1.5  # clipped: the outlier barely moves it


# --------------------------------------------------------------------------- alert states


@dataclass(frozen=True)
class Day:
    """One observation of the synthetic segment: offset from START_DAY and churned."""

    offset: int
    churned: int
    base: int = BASE


def _feed(
    detector: SpikeDetector, days: list[Day], window: str = "day", before: list[Day] = ()
) -> list[tuple]:
    """Observe each day (the rolling rate from the last 7 days, `before` included) and return
    the alerts as (offset observed, status, window, severity, alert's day, first_seen)."""
    history = {item.offset: item.churned for item in before}
    out = []
    for item in days:
        history[item.offset] = item.churned
        week = [history[item.offset - back] for back in range(7) if item.offset - back in history]
        rolling = sum(week) / item.base if len(week) == 7 else None
        alerts = detector.observe(
            "plan", "pro", (START_DAY + item.offset) * DAY_MS, item.churned, item.base, rolling
        )
        out.extend(
            (
                item.offset,
                alert.status,
                alert.window,
                alert.severity,
                _offset(alert.day),
                _offset(alert.first_seen),
            )
            for alert in alerts
            if alert.window == window
        )
    return out


def _offset(moment: datetime) -> int:
    return int(moment.timestamp() * 1000) // DAY_MS - START_DAY


def _calm(first: int, last: int, base: int = BASE) -> list[Day]:
    return [Day(offset, CYCLE[offset % 7], base) for offset in range(first, last)]


SCENARIOS = {
    "calm: nothing": (_calm(0, 60), []),
    "a spike during the warm-up: not scored": (
        [*_calm(0, 10), Day(10, 60), *_calm(11, 30)],
        [],
    ),
    "tiny segment: never alerts": (
        [*_calm(0, 30, base=40), Day(30, 40, base=40), *_calm(31, 40, base=40)],
        [],
    ),
    "a moderate bump: below the warning score": (
        [*_calm(0, 30), Day(30, 11), *_calm(31, 40)],
        [],
    ),
    "one spike day: warning, then resolved after two calm finished days": (
        [*_calm(0, 30), Day(30, 18), *_calm(31, 40)],
        [(30, "firing", "day", "warning", 30, 30), (33, "resolved", "day", "warning", 32, 30)],
    ),
    "a big spike: critical at once": (
        [*_calm(0, 30), Day(30, 40), *_calm(31, 40)],
        [(30, "firing", "day", "critical", 30, 30), (33, "resolved", "day", "critical", 32, 30)],
    ),
    "hysteresis: one calm day inside the spike does not resolve it": (
        [*_calm(0, 30), Day(30, 18), Day(31, 5), Day(32, 19), *_calm(33, 40)],
        [(30, "firing", "day", "warning", 30, 30), (35, "resolved", "day", "warning", 34, 30)],
    ),
    "escalation: warning, then critical, one alert": (
        [*_calm(0, 30), Day(30, 18), Day(31, 40), *_calm(32, 40)],
        [
            (30, "firing", "day", "warning", 30, 30),
            (31, "firing", "day", "critical", 31, 30),
            (34, "resolved", "day", "critical", 33, 30),
        ],
    ),
    "two separate spikes: two alerts": (
        [*_calm(0, 30), Day(30, 18), *_calm(31, 40), Day(40, 18), *_calm(41, 50)],
        [
            (30, "firing", "day", "warning", 30, 30),
            (33, "resolved", "day", "warning", 32, 30),
            (40, "firing", "day", "warning", 40, 40),
            (43, "resolved", "day", "warning", 42, 40),
        ],
    ),
    "a drop in churn: no alert": (
        [*_calm(0, 30), Day(30, 0), Day(31, 0), *_calm(32, 40)],
        [],
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_day_window_scenarios(name):
    days, expected = SCENARIOS[name]
    assert _feed(SpikeDetector(), days) == expected


def test_the_rolling_window_opens_on_a_sustained_rise_and_resolves_after_it_passes():
    days = [*_calm(0, 30), *(Day(offset, 14) for offset in range(30, 34)), *_calm(34, 50)]
    alerts = _feed(SpikeDetector(), days, window="rolling_7d")
    assert alerts[0][1] == "firing" and alerts[-1][1] == "resolved"
    assert 30 <= alerts[0][0] <= 33
    assert alerts[-1][0] > 33 + 1  # not while the 7-day window still holds the rise


def test_the_open_day_fires_as_soon_as_its_partial_count_is_abnormal():
    detector = SpikeDetector()
    _feed(detector, _calm(0, 30))
    day_ms = (START_DAY + 30) * DAY_MS
    assert detector.observe("plan", "pro", day_ms, 3, BASE, 0.035) == []
    fired = detector.observe("plan", "pro", day_ms, 20, BASE, 0.05)
    assert [alert.status for alert in fired if alert.window == "day"] == ["firing"]
    # the same record again (a re-emission) or a corrected one changes nothing
    assert detector.observe("plan", "pro", day_ms, 20, BASE, 0.05) == []
    assert detector.observe("plan", "pro", day_ms, 21, BASE, 0.05) == []
    assert detector.current_score("plan", "pro", "day") >= SpikeConfig().warning_score


def test_a_corrected_finished_day_is_stored_but_decides_no_alert():
    detector = SpikeDetector()
    _feed(detector, _calm(0, 40))
    old_ms = (START_DAY + 35) * DAY_MS
    assert detector.observe("plan", "pro", old_ms, 90, BASE, 0.1) == []
    assert detector.to_dict()["series"][0]["days"][str(START_DAY + 35)][0] == 90
    assert detector.latest_day_ms("plan", "pro") == (START_DAY + 39) * DAY_MS  # not moved
    assert detector.latest_day_ms("plan", "nope") is None
    too_old_ms = (START_DAY + 1) * DAY_MS
    assert detector.observe("plan", "pro", too_old_ms, 90, BASE, 0.1) == []


def test_the_day_just_finished_opens_the_alert_when_its_late_events_make_it_a_spike():
    detector = SpikeDetector()
    _feed(detector, _calm(0, 30))
    spike_ms, next_ms = (START_DAY + 30) * DAY_MS, (START_DAY + 31) * DAY_MS
    assert detector.observe("plan", "pro", spike_ms, 3, BASE, 0.035) == []  # partial, calm
    assert detector.observe("plan", "pro", next_ms, 1, BASE, 0.035) == []  # next day began
    fired = detector.observe("plan", "pro", spike_ms, 20, BASE, 0.05)  # its late events
    day_alerts = [
        (alert.status, _offset(alert.day), _offset(alert.first_seen))
        for alert in fired
        if alert.window == "day"
    ]
    assert day_alerts == [("firing", 30, 30)]
    assert detector.observe("plan", "pro", spike_ms, 21, BASE, 0.05) == []  # open already
    assert detector.current_score("plan", "pro", "day") < SpikeConfig().warning_score


def test_observing_the_whole_history_twice_counts_nothing_twice():
    days = [*_calm(0, 30), Day(30, 18), *_calm(31, 40)]
    once = SpikeDetector()
    first = _feed(once, days)
    again = [alert for alert in _feed(once, days[-1:])]
    assert first and again == []


def test_scores_are_zero_for_unknown_series_and_windows_are_checked():
    detector = SpikeDetector()
    assert detector.current_score("plan", "nope", "day") == 0.0
    with pytest.raises(ValueError, match="window"):
        detector.current_score("plan", "nope", "week")
    with pytest.raises(ValueError, match="midnight"):
        detector.observe("plan", "pro", START_DAY * DAY_MS + 1, 1, BASE, None)


def test_state_round_trips_through_a_plain_dict_mid_stream():
    days = [*_calm(0, 30), Day(30, 18), Day(31, 40), *_calm(32, 45)]
    straight = SpikeDetector()
    expected = _feed(straight, days)

    first = SpikeDetector()
    got = _feed(first, days[:31])  # stop while the alert is open
    data = json.loads(json.dumps(first.to_dict()))  # plain JSON data, as a faust table keeps
    resumed = SpikeDetector.from_dict(data)
    got += _feed(resumed, days[31:], before=days[:31])
    assert got == expected
    assert resumed.to_dict() == straight.to_dict()
    assert resumed.scores() == straight.scores()


def test_unknown_state_versions_are_refused():
    with pytest.raises(ValueError, match="version"):
        SpikeDetector.from_dict({"version": 99, "series": []})


def test_alerts_are_valid_records_of_the_published_model():
    days = [*_calm(0, 30), Day(30, 40)]
    detector = SpikeDetector()
    fired = []
    for item in days:
        fired = detector.observe(
            "plan", "pro", (START_DAY + item.offset) * DAY_MS, item.churned, BASE, 0.035
        )
    alert = next(alert for alert in fired if alert.window == "day")
    parsed = SpikeAlert.model_validate_json(alert.model_dump_json())
    assert parsed == alert
    assert alert.key == "day/plan/pro"
    assert alert.observed == 40 and alert.expected == pytest.approx(5, rel=0.1)
    assert alert.day == datetime(2026, 1, 31, tzinfo=UTC) == alert.first_seen
    assert detector.firing() == [("day", "plan", "pro", "critical")]


# --------------------------------------------------------------------------- simulated


SIMULATION = SimulationConfig(
    customers=4000,
    start=date(2026, 1, 1),
    days=75,
    seed=5,
    activity_rate=0.0,  # churn is what matters here; fewer events, faster test
    purchase_rate=0.0,
)
SPIKE = Spike(start=date(2026, 3, 2), days=4, multiplier=6.0)
BATCH_MS = 2 * 3_600_000  # events are fed in 2-hour slices of event time


def _time_ms(event: dict) -> int:
    return int(datetime.fromisoformat(event["occurred_at"]).timestamp() * 1000)


def _detect(config: SimulationConfig) -> list[tuple[int, SpikeAlert]]:
    """(event time fed so far, alert) for the simulated history, slice by slice."""
    pipeline = LocalPipeline(dimensions=("plan", "region"), partitions=2)
    detector = SpikeDetector()
    found: list[tuple[int, SpikeAlert]] = []

    def feed(batch: list[dict], fed_until_ms: int) -> None:
        pipeline.ingest([orjson.dumps(event) for event in batch])
        before = dict(pipeline.latest)
        pipeline.flush()
        changed = [r for key, r in pipeline.latest.items() if before.get(key) is not r]
        found.extend((fed_until_ms, a) for a in detector.observe_flush(changed, pipeline.latest))

    batch: list[dict] = []
    slice_end = config.start_ms + BATCH_MS
    for event in generate_events(config):
        while _time_ms(event) >= slice_end:
            feed(batch, slice_end)
            batch, slice_end = [], slice_end + BATCH_MS
        batch.append(event)
    feed(batch, slice_end)
    return found


@pytest.fixture(scope="module")
def with_spike() -> list[tuple[int, SpikeAlert]]:
    return _detect(replace(SIMULATION, spikes=(SPIKE,)))


def test_the_pairing_key_is_the_rolling_window_ending_that_day():
    record = {"window_start": "2026-03-08T00:00:00+00:00", "dimension": "all", "segment": "all"}
    assert rolling_7d_key(record) == "rolling_7d/all/all/2026-03-02T00:00:00+00:00"


def test_a_simulated_spike_is_detected_within_a_day_and_resolved_after_it_ends(with_spike):
    firing = [(fed, alert) for fed, alert in with_spike if alert.status == "firing"]
    resolved = [(fed, alert) for fed, alert in with_spike if alert.status == "resolved"]
    # Found within one day of event time after it starts, in the all-customers series.
    first_all = min(fed for fed, a in firing if a.dimension == "all" and a.window == "day")
    assert SPIKE.start_ms < first_all <= SPIKE.start_ms + DAY_MS
    # Nothing before it starts: no alert fed before, and no alert about an earlier day.
    assert min(fed for fed, _ in with_spike) > SPIKE.start_ms
    assert all(alert.first_seen >= _utc(SPIKE.start_ms) for _, alert in with_spike)
    # Every series that fired is resolved, after the spike ended.
    opened = {alert.key for _, alert in firing}
    assert opened == {alert.key for _, alert in resolved}
    assert {"day/all/all", "rolling_7d/all/all"} <= opened
    assert all(fed > SPIKE.end_ms for fed, _ in resolved)
    assert all(alert.score < SpikeConfig().resolve_score for _, alert in resolved)


def test_the_same_simulation_without_the_spike_raises_nothing():
    assert _detect(SIMULATION) == []


def _utc(time_ms: int) -> datetime:
    return datetime.fromtimestamp(time_ms / 1000, tz=UTC)
