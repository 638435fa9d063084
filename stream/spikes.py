"""Churn spike detection per (dimension, segment), in event time. Pure Python: no Kafka,
faust or Prometheus here.

Input: one observation per UTC day of a segment, in event-time order, taken from the day
window's record (`churned_customers`, `customers_start`) and the rolling_7d record that
ends with that day (`churn_rate`). Two series are scored per segment:

- `day`: the day's churned customers, against `expected = baseline daily churn rate x
  customers_start`;
- `rolling_7d`: the trailing 7-day churn rate, against its own baseline rate.

Baseline: an exponentially weighted mean and variance of the series' rate over the
`lookback_days` days *before* the scored day (half-life `halflife_days`), computed afresh
from the stored observations, so it is a pure function of them. Days with fewer than
`min_customers` customers at start are ignored, and a segment is not scored before
`warmup_days` such days. Once warm, every value that enters the baseline is clipped to
`clip_score` standard deviations, so a spike does not teach the baseline that spikes are
normal.

Score: the observed count against a Poisson with the expected count as its mean, widened
by the overdispersion the baseline has seen (quasi-Poisson), turned into the standard
normal quantile of its upper-tail probability (mid-p). So it reads like a z-score (0 is
normal, 4 is a one-in-30,000 day) and stays honest for small counts, where a plain
(observed - expected) / sd overstates.

Alerts, per (dimension, segment, window), with hysteresis:
- opens (`firing`, first_seen = that day) as soon as an observation of the latest day
  scores at least `warning_score` (an open day's counts only grow towards the final ones,
  so this fires within the day); escalates (`firing` again, `critical`) at `critical_score`;
- resolves (`resolved`) once `resolve_days` consecutive *finished* days scored below
  `resolve_score`. A day is finished when a later day of the segment is observed.

Corrections: observing a day again replaces its stored observation (never counted twice).
A correction of the latest day re-scores it; a correction of an earlier day changes the
baselines of the days after it but does not re-decide alerts already emitted.

The whole state is a plain dict (`to_dict` / `from_dict`), ready for a faust table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from statistics import NormalDist
from typing import Any, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stream.records import record_key

Window = Literal["day", "rolling_7d"]
Severity = Literal["warning", "critical"]

DAY_MS: Final = 86_400_000
WINDOWS: Final[tuple[Window, ...]] = ("day", "rolling_7d")
MAX_SCORE: Final = 40.0
STATE_VERSION: Final = 1
_NORMAL: Final = NormalDist()
_NORMAL_APPROXIMATION_ABOVE: Final = 5000.0  # expected count beyond which a normal is exact enough
_MAX_ITERATIONS: Final = 10_000


class SpikeConfig(BaseModel):
    """Tuning of the detector. The defaults suit daily series of a few hundred customers up."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_customers: int = Field(
        default=50, ge=1, description="Days with fewer customers at start are not scored."
    )
    warmup_days: int = Field(
        default=14, ge=2, description="Eligible days of baseline needed before scoring."
    )
    lookback_days: int = Field(
        default=56, ge=2, description="Days before the scored day the baseline is learned from."
    )
    halflife_days: float = Field(
        default=14.0, gt=0, description="Half-life of the baseline's exponential weights."
    )
    warning_score: float = Field(default=4.0, gt=0, description="Score that opens an alert.")
    critical_score: float = Field(default=6.0, gt=0, description="Score that makes it critical.")
    resolve_score: float = Field(
        default=2.0, description="A finished day below this score counts towards resolution."
    )
    resolve_days: int = Field(
        default=2, ge=1, description="Consecutive calm finished days that resolve an alert."
    )
    clip_score: float = Field(
        default=3.0, gt=0, description="Baseline inputs are clipped to this many sds once warm."
    )
    min_expected: float = Field(
        default=0.5, gt=0, description="Floor of the expected count (customers) of a day."
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.resolve_score < self.warning_score <= self.critical_score:
            raise ValueError("need resolve_score < warning_score <= critical_score")
        if self.warmup_days > self.lookback_days:
            raise ValueError("warmup_days cannot exceed lookback_days")
        return self


class SpikeAlert(BaseModel):
    """A churn spike opening, escalating or ending, as published on `churn-alerts`."""

    model_config = ConfigDict(frozen=True, json_schema_extra={"title": "churn-stream spike alert"})

    dimension: str = Field(description="'all' or a configured attribute name.")
    segment: str = Field(description="The segment value ('all' for dimension 'all').")
    window: Window = Field(
        description="day: churned customers of one UTC day; rolling_7d: the 7-day churn rate."
    )
    day: datetime = Field(description="Start (UTC) of the event-time day this record is about.")
    observed: float = Field(
        description="day: churned customers that day; rolling_7d: churn rate of the 7 days."
    )
    expected: float = Field(description="The baseline for `observed`, in the same unit.")
    customers_start: int = Field(ge=0, description="Customers at the start of that day.")
    score: float = Field(description="z-like score: 0 is normal, 4 a one-in-30,000 day.")
    severity: Severity = Field(description="warning or critical (highest reached while firing).")
    first_seen: datetime = Field(description="Start (UTC) of the day the spike was first seen.")
    status: Literal["firing", "resolved"] = Field(description="firing, or resolved at its end.")

    @property
    def key(self) -> str:
        """Message key on the alert topic: one key per alerting series."""
        return f"{self.window}/{self.dimension}/{self.segment}"


@dataclass(frozen=True, slots=True)
class Observation:
    churned: int
    customers_start: int
    rolling_7d_churn_rate: float | None

    def rate(self, window: str) -> float | None:
        if window == "rolling_7d":
            return self.rolling_7d_churn_rate
        return self.churned / self.customers_start if self.customers_start > 0 else None

    def to_list(self) -> list[Any]:
        return [self.churned, self.customers_start, self.rolling_7d_churn_rate]

    @classmethod
    def from_list(cls, values: list[Any]) -> Observation:
        churned, customers_start, rate = values
        return cls(int(churned), int(customers_start), None if rate is None else float(rate))


@dataclass(frozen=True, slots=True)
class Baseline:
    mean: float  # rate
    variance: float  # of the rate
    days: int  # eligible days it was learned from


@dataclass(frozen=True, slots=True)
class Assessment:
    score: float
    observed: float
    expected: float
    customers_start: int


_NOT_SCORED: Final = Assessment(0.0, 0.0, 0.0, 0)


@dataclass(slots=True)
class AlertState:
    open: bool = False
    severity: Severity | None = None
    first_seen_day: int | None = None
    calm_days: int = 0
    score: float = 0.0  # of the latest observation

    def to_dict(self) -> dict[str, Any]:
        return {
            "open": self.open,
            "severity": self.severity,
            "first_seen_day": self.first_seen_day,
            "calm_days": self.calm_days,
            "score": self.score,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlertState:
        return cls(
            open=bool(data["open"]),
            severity=data["severity"],
            first_seen_day=data["first_seen_day"],
            calm_days=int(data["calm_days"]),
            score=float(data["score"]),
        )


@dataclass(slots=True)
class SeriesState:
    """Stored daily observations of one segment (the last lookback days) and its alerts."""

    latest_day: int | None = None
    days: dict[int, Observation] = field(default_factory=dict)
    alerts: dict[str, AlertState] = field(
        default_factory=lambda: {window: AlertState() for window in WINDOWS}
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "latest_day": self.latest_day,
            "days": {str(day): obs.to_list() for day, obs in sorted(self.days.items())},
            "alerts": {window: state.to_dict() for window, state in self.alerts.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SeriesState:
        return cls(
            latest_day=data["latest_day"],
            days={int(day): Observation.from_list(obs) for day, obs in data["days"].items()},
            alerts={window: AlertState.from_dict(data["alerts"][window]) for window in WINDOWS},
        )


# --------------------------------------------------------------------------- statistics


def _gamma_p(a: float, x: float) -> float:
    """Regularized lower incomplete gamma P(a, x), a > 0 (Numerical Recipes 6.2)."""
    if x <= 0:
        return 0.0
    log_prefactor = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        ap = a
        for _ in range(_MAX_ITERATIONS):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return min(1.0, total * math.exp(log_prefactor))
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, _MAX_ITERATIONS):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return max(0.0, 1.0 - math.exp(log_prefactor) * h)


def _poisson_at_least(k: float, mean: float) -> float:
    """P(X >= k) for X ~ Poisson(mean), continuous in k (= P(k, mean) for k > 0)."""
    return 1.0 if k <= 0 else _gamma_p(k, mean)


def poisson_score(observed: float, expected: float, dispersion: float = 1.0) -> float:
    """z-like score of `observed` events when `expected` were due (quasi-Poisson).

    The mid-p upper-tail probability of the observed count under a Poisson with the
    expected mean, both divided by the dispersion (>= 1), as a standard normal quantile.
    """
    phi = max(1.0, dispersion)
    k, mean = observed / phi, expected / phi
    if mean > _NORMAL_APPROXIMATION_ABOVE:
        z = (k - mean) / math.sqrt(mean)
    else:
        tail = 0.5 * (_poisson_at_least(k, mean) + _poisson_at_least(k + 1, mean))
        tail = min(max(tail, 1e-300), 1.0 - 1e-16)
        z = -_NORMAL.inv_cdf(tail)
    return max(-MAX_SCORE, min(MAX_SCORE, z))


def learn_baseline(
    series: Mapping[int, Observation], day: int, window: str, config: SpikeConfig
) -> Baseline | None:
    """The baseline rate of `window` for `day`, from the lookback days before it."""
    alpha = 1.0 - 0.5 ** (1.0 / config.halflife_days)
    days = mean = variance = 0.0
    for earlier in range(day - config.lookback_days, day):
        obs = series.get(earlier)
        if obs is None or obs.customers_start < config.min_customers:
            continue
        value = obs.rate(window)
        if value is None:
            continue
        if days >= config.warmup_days:
            sd = math.sqrt(_rate_variance(mean, variance, obs.customers_start, config))
            value = min(max(value, mean - config.clip_score * sd), mean + config.clip_score * sd)
        days += 1
        weight = max(alpha, 1.0 / days)
        difference = value - mean
        mean += weight * difference
        variance = (1.0 - weight) * (variance + weight * difference * difference)
    if days < config.warmup_days:
        return None
    return Baseline(mean, variance, int(days))


def _rate_variance(mean: float, variance: float, customers: int, config: SpikeConfig) -> float:
    """The learned variance of a rate, at least what Poisson counting noise alone gives."""
    floor_rate = max(mean, config.min_expected / customers)
    return max(variance, floor_rate / customers)


def assess(
    series: Mapping[int, Observation], day: int, window: str, config: SpikeConfig
) -> Assessment:
    """Score of `day`'s stored observation in `window` against its baseline."""
    obs = series.get(day)
    if obs is None or obs.customers_start < config.min_customers:
        return _NOT_SCORED
    value = obs.rate(window)
    baseline = learn_baseline(series, day, window, config) if value is not None else None
    if value is None or baseline is None:
        return _NOT_SCORED
    customers = obs.customers_start
    expected_count = max(baseline.mean * customers, config.min_expected)
    dispersion = baseline.variance * customers * customers / expected_count
    score = poisson_score(value * customers, expected_count, dispersion)
    if window == "day":
        return Assessment(score, float(obs.churned), expected_count, customers)
    return Assessment(score, value, baseline.mean, customers)


# --------------------------------------------------------------------------- the detector


def _utc(day: int) -> datetime:
    return datetime.fromtimestamp(day * DAY_MS / 1000, tz=UTC)


def _iso_ms(text: str) -> int:
    moment = datetime.fromisoformat(text)
    return round(moment.timestamp() * 1000)


def rolling_7d_key(day_record: Mapping[str, Any]) -> str:
    """Key of the rolling_7d record that ends with the day of `day_record`."""
    start_ms = _iso_ms(str(day_record["window_start"])) - 6 * DAY_MS
    return record_key(
        "rolling_7d", str(day_record["dimension"]), str(day_record["segment"]), start_ms
    )


class SpikeDetector:
    """Per-(dimension, segment) daily spike detection; see the module doc."""

    def __init__(self, config: SpikeConfig | None = None) -> None:
        self.config = config or SpikeConfig()
        self._series: dict[tuple[str, str], SeriesState] = {}

    # ---- input

    def observe(
        self,
        dimension: str,
        segment: str,
        day_start_ms: int,
        churned: int,
        customers_start: int,
        rolling_7d_churn_rate: float | None,
    ) -> list[SpikeAlert]:
        """Record the (possibly partial, possibly corrected) observation of one day and
        return the alerts it opens, escalates or resolves."""
        if day_start_ms % DAY_MS:
            raise ValueError(f"day_start_ms must be a UTC midnight, got {day_start_ms}")
        if churned < 0 or customers_start < 0:
            raise ValueError("churned and customers_start must be >= 0")
        day = day_start_ms // DAY_MS
        state = self._series.setdefault((dimension, segment), SeriesState())
        latest = state.latest_day
        if latest is not None and day < latest - self.config.lookback_days:
            return []  # older than any baseline still to be computed
        state.days[day] = Observation(churned, customers_start, rolling_7d_churn_rate)
        if latest is not None and day < latest:
            # A finished day corrected (its last events arrived after the next day began):
            # later baselines see it, and if it is the day just finished its full count may
            # open the alert its partial count did not.
            if day < latest - 1:
                return []
            return [
                alert
                for window in WINDOWS
                for alert in self._reassess(dimension, segment, state, day, window)
            ]
        alerts: list[SpikeAlert] = []
        if latest is not None and day > latest:
            for window in WINDOWS:
                alerts.extend(self._finish(dimension, segment, state, latest, window))
            oldest = day - self.config.lookback_days
            for stale in [known for known in state.days if known < oldest]:
                del state.days[stale]
        state.latest_day = day
        for window in WINDOWS:
            alerts.extend(self._evaluate(dimension, segment, state, day, window))
        return alerts

    def observe_records(
        self, day_record: Mapping[str, Any], rolling_7d_record: Mapping[str, Any] | None
    ) -> list[SpikeAlert]:
        """`observe` from metric records (the churn-metrics shape): a `day` record and the
        `rolling_7d` record of the same segment that ends with that day (or None)."""
        if day_record["window"] != "day":
            raise ValueError("day_record must be a record of the day window")
        day_start_ms = _iso_ms(str(day_record["window_start"]))
        rate = None
        if rolling_7d_record is not None:
            if (
                rolling_7d_record["window"] != "rolling_7d"
                or _iso_ms(str(rolling_7d_record["window_end"])) != day_start_ms + DAY_MS
            ):
                raise ValueError("rolling_7d_record must be the rolling_7d window ending that day")
            raw_rate = rolling_7d_record["churn_rate"]
            rate = None if raw_rate is None else float(raw_rate)
        return self.observe(
            str(day_record["dimension"]),
            str(day_record["segment"]),
            day_start_ms,
            int(day_record["churned_customers"]),
            int(day_record["customers_start"]),
            rate,
        )

    def observe_flush(
        self, changed: Iterable[Mapping[str, Any]], latest: Mapping[str, Mapping[str, Any]]
    ) -> list[SpikeAlert]:
        """Feed the `day` records among `changed` (records just emitted), oldest day first,
        each with its rolling_7d partner looked up by key in `latest` (key -> record)."""
        days = sorted(
            (record for record in changed if record["window"] == "day"),
            key=lambda record: (
                _iso_ms(str(record["window_start"])),
                str(record["dimension"]),
                str(record["segment"]),
            ),
        )
        alerts: list[SpikeAlert] = []
        for record in days:
            alerts.extend(self.observe_records(record, latest.get(rolling_7d_key(record))))
        return alerts

    # ---- output

    def current_score(self, dimension: str, segment: str, window: str) -> float:
        """Score of the latest observation of that series (0.0 when unknown or warming up)."""
        if window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")
        state = self._series.get((dimension, segment))
        return 0.0 if state is None else state.alerts[window].score

    def latest_day_ms(self, dimension: str, segment: str) -> int | None:
        """Start of the latest day observed for that segment (None if none yet)."""
        state = self._series.get((dimension, segment))
        if state is None or state.latest_day is None:
            return None
        return state.latest_day * DAY_MS

    def scores(self) -> list[tuple[str, str, str, float]]:
        """(window, dimension, segment, score) of every series, for a gauge."""
        return [
            (window, dimension, segment, state.alerts[window].score)
            for (dimension, segment), state in sorted(self._series.items())
            for window in WINDOWS
        ]

    def firing(self) -> list[tuple[str, str, str, Severity]]:
        """(window, dimension, segment, severity) of every open alert."""
        return [
            (window, dimension, segment, alert.severity or "warning")
            for (dimension, segment), state in sorted(self._series.items())
            for window, alert in state.alerts.items()
            if alert.open
        ]

    # ---- state

    def to_dict(self) -> dict[str, Any]:
        """The whole state as plain JSON-ready data (no config: that comes from settings)."""
        return {
            "version": STATE_VERSION,
            "series": [
                {"dimension": dimension, "segment": segment, **state.to_dict()}
                for (dimension, segment), state in sorted(self._series.items())
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], config: SpikeConfig | None = None) -> Self:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported spike state version {data.get('version')!r}")
        detector = cls(config)
        for entry in data["series"]:
            key = (str(entry["dimension"]), str(entry["segment"]))
            detector._series[key] = SeriesState.from_dict(entry)
        return detector

    # ---- the state machine

    def _alert(
        self,
        dimension: str,
        segment: str,
        window: Window,
        day: int,
        alert: AlertState,
        assessment: Assessment,
        status: Literal["firing", "resolved"],
    ) -> SpikeAlert:
        return SpikeAlert(
            dimension=dimension,
            segment=segment,
            window=window,
            day=_utc(day),
            observed=assessment.observed,
            expected=assessment.expected,
            customers_start=assessment.customers_start,
            score=round(assessment.score, 6),
            severity=alert.severity or "warning",
            first_seen=_utc(alert.first_seen_day if alert.first_seen_day is not None else day),
            status=status,
        )

    def _severity(self, score: float) -> Severity:
        return "critical" if score >= self.config.critical_score else "warning"

    def _evaluate(
        self, dimension: str, segment: str, state: SeriesState, day: int, window: Window
    ) -> list[SpikeAlert]:
        """The latest day, as observed so far: may open or escalate an alert."""
        assessment = assess(state.days, day, window, self.config)
        state.alerts[window].score = assessment.score
        return self._open_or_escalate(dimension, segment, state, day, window, assessment)

    def _reassess(
        self, dimension: str, segment: str, state: SeriesState, day: int, window: Window
    ) -> list[SpikeAlert]:
        """A finished day corrected: may open or escalate an alert (the score gauge stays
        the latest day's)."""
        assessment = assess(state.days, day, window, self.config)
        return self._open_or_escalate(dimension, segment, state, day, window, assessment)

    def _open_or_escalate(
        self,
        dimension: str,
        segment: str,
        state: SeriesState,
        day: int,
        window: Window,
        assessment: Assessment,
    ) -> list[SpikeAlert]:
        alert = state.alerts[window]
        if not alert.open and assessment.score >= self.config.warning_score:
            alert.open, alert.first_seen_day, alert.calm_days = True, day, 0
            alert.severity = self._severity(assessment.score)
        elif (
            alert.open
            and alert.severity == "warning"
            and (assessment.score >= self.config.critical_score)
        ):
            alert.severity = "critical"
        else:
            return []
        return [self._alert(dimension, segment, window, day, alert, assessment, "firing")]

    def _finish(
        self, dimension: str, segment: str, state: SeriesState, day: int, window: Window
    ) -> list[SpikeAlert]:
        """`day` is finished (a later day was observed): may resolve an open alert."""
        alert = state.alerts[window]
        if not alert.open:
            return []
        assessment = assess(state.days, day, window, self.config)
        alert.calm_days = alert.calm_days + 1 if assessment.score < self.config.resolve_score else 0
        if alert.calm_days < self.config.resolve_days:
            return []
        resolved = self._alert(dimension, segment, window, day, alert, assessment, "resolved")
        alert.open, alert.severity, alert.first_seen_day, alert.calm_days = False, None, None, 0
        return [resolved]
