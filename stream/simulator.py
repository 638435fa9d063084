"""A deterministic generator of realistic customer lifecycle event histories. No Kafka here.

`generate_events(config)` lazily yields event dicts (the input contract of
`stream.events`) in *delivery order*: by event time, plus the configured noise of
duplicates and late (out-of-order) deliveries.

The model, per customer:
- arrives once (a share of the base on the first day, the rest spread uniformly over the
  period): `subscribed` with mrr and the `plan` / `region` attributes;
- while active: `renewed` every 30 days (paid plans only), `activity` and `purchase`
  events (Poisson, scaled by a per-customer engagement factor), `plan_changed` to an
  adjacent plan (Poisson), and `churned` after an exponential time whose hazard follows
  the monthly churn probability (times the plan's churn factor and any spike);
- after churning, comes back with the reactivation probability (`reactivated`).

Determinism and locality: one `random.Random(seed)` drives the world and is only consulted
in event-time order (a heap of per-customer next-event times), so a spike changes nothing
before its start. The delivery noise has its own generator derived from the seed, so
changing the noise leaves the world unchanged.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from itertools import accumulate
from typing import Any, Final, TypeVar

DAY_MS: Final = 86_400_000
RENEWAL_MS: Final = 30 * DAY_MS
MONTH_MS: Final = round(365 / 12 * DAY_MS)
MAX_MONTHLY_CHURN: Final = 0.99
_EPOCH_DATE: Final = date(1970, 1, 1)
_EARLIEST_START: Final = date(2000, 1, 1)
_DUPLICATE_POOL: Final = 1000
_SPIKE_FORM: Final = "START:DAYS:MULTIPLIER[:DIM=VALUE], e.g. 2026-03-01:7:5:plan=pro"

Event = dict[str, Any]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    mrr: float
    weight: float
    churn_factor: float = 1.0  # multiplies the monthly churn probability


@dataclass(frozen=True, slots=True)
class Spike:
    """Churn probability x `multiplier` for `days` days from `start` (00:00 UTC).

    With a `segment` (dimension, value), e.g. ("plan", "pro"), only customers with that
    attribute value are affected.
    """

    start: date
    days: int
    multiplier: float
    segment: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if self.days < 1:
            raise ValueError(f"spike days must be at least 1, got {self.days}")
        if not (math.isfinite(self.multiplier) and self.multiplier >= 0):
            raise ValueError(f"spike multiplier must be a finite number >= 0: {self.multiplier}")

    @property
    def start_ms(self) -> int:
        return _date_ms(self.start)

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.days * DAY_MS

    def applies_to(self, plan: str, region: str) -> bool:
        if self.segment is None:
            return True
        dimension, value = self.segment
        return (plan if dimension == "plan" else region) == value


DEFAULT_PLANS: Final = (
    Plan("free", 0.0, 0.35, churn_factor=1.4),
    Plan("basic", 19.0, 0.35, churn_factor=1.0),
    Plan("pro", 49.0, 0.22, churn_factor=0.7),
    Plan("enterprise", 199.0, 0.08, churn_factor=0.4),
)
DEFAULT_REGIONS: Final = (("eu", 0.4), ("us", 0.4), ("apac", 0.2))


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. Probabilities are per month, rates per active customer per day."""

    customers: int = 1000
    start: date = date(2026, 1, 1)
    days: int = 90
    seed: int = 0
    churn_probability: float = 0.05
    reactivation_probability: float = 0.2
    reactivation_mean_days: float = 45.0
    plan_change_probability: float = 0.03
    purchase_rate: float = 0.05
    activity_rate: float = 0.5
    initial_share: float = 0.3  # share of customers that subscribe on the first day
    plans: tuple[Plan, ...] = DEFAULT_PLANS  # in tier order (plan changes go to a neighbour)
    regions: tuple[tuple[str, float], ...] = DEFAULT_REGIONS
    duplicate_fraction: float = 0.0  # share of delivered messages that are re-emissions
    out_of_order_fraction: float = 0.0  # share of events delivered late
    max_delay_seconds: float = 3600.0  # how late, in event time, a late event may be
    spikes: tuple[Spike, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _check_counts(self)
        _check_probabilities(self)
        _check_plans(self.plans)
        _check_regions(self.regions)
        for spike in self.spikes:
            _check_spike(spike, self)

    @property
    def start_ms(self) -> int:
        return _date_ms(self.start)

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.days * DAY_MS


def _check_counts(config: SimulationConfig) -> None:
    if config.customers < 1:
        raise ValueError("customers must be at least 1")
    if config.days < 1:
        raise ValueError("days must be at least 1")
    if config.start < _EARLIEST_START:
        raise ValueError("start must be on or after 2000-01-01 (the contract's earliest time)")
    rates = {
        "reactivation_mean_days": config.reactivation_mean_days,
        "purchase_rate": config.purchase_rate,
        "activity_rate": config.activity_rate,
        "max_delay_seconds": config.max_delay_seconds,
    }
    for name, value in rates.items():
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def _check_probabilities(config: SimulationConfig) -> None:
    probabilities = {
        "churn_probability": config.churn_probability,
        "reactivation_probability": config.reactivation_probability,
        "plan_change_probability": config.plan_change_probability,
        "initial_share": config.initial_share,
        "duplicate_fraction": config.duplicate_fraction,
        "out_of_order_fraction": config.out_of_order_fraction,
    }
    for name, value in probabilities.items():
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be between 0 and 1, got {value}")
    if config.churn_probability >= 1 or config.plan_change_probability >= 1:
        raise ValueError("churn and plan-change probabilities must be below 1")
    if config.duplicate_fraction >= 1:
        raise ValueError("duplicate_fraction must be below 1")


def _check_plans(plans: tuple[Plan, ...]) -> None:
    if not plans:
        raise ValueError("at least one plan is needed")
    if len({plan.name for plan in plans}) != len(plans):
        raise ValueError("plan names must be distinct")
    for plan in plans:
        if not (plan.name and 0 <= plan.mrr <= 1e9 and plan.weight >= 0 and plan.churn_factor >= 0):
            raise ValueError(f"invalid plan {plan}")
    if sum(plan.weight for plan in plans) <= 0:
        raise ValueError("plan weights must not all be zero")


def _check_regions(regions: tuple[tuple[str, float], ...]) -> None:
    if not regions or len({name for name, _ in regions}) != len(regions):
        raise ValueError("regions must be a non-empty list of distinct names")
    if any(not name or weight < 0 for name, weight in regions):
        raise ValueError("region names must be non-empty and weights >= 0")
    if sum(weight for _, weight in regions) <= 0:
        raise ValueError("region weights must not all be zero")


def _check_spike(spike: Spike, config: SimulationConfig) -> None:
    if spike.segment is None:
        return
    dimension, value = spike.segment
    known = {
        "plan": [plan.name for plan in config.plans],
        "region": [name for name, _ in config.regions],
    }
    if dimension not in known:
        raise ValueError(f"spike dimension must be one of {', '.join(known)}, got {dimension!r}")
    if value not in known[dimension]:
        choices = ", ".join(known[dimension])
        raise ValueError(f"spike {dimension}={value!r} is not simulated (choose from {choices})")


def parse_spike(text: str) -> Spike:
    """Parse START:DAYS:MULTIPLIER[:DIM=VALUE], e.g. `2026-03-01:7:5:plan=pro`."""
    parts = text.strip().split(":")
    if len(parts) not in (3, 4):
        raise ValueError(f"spike {text!r} must look like {_SPIKE_FORM}")
    start = _parse_part(parts[0], date.fromisoformat, "START must be a date YYYY-MM-DD", text)
    days = _parse_part(parts[1], int, "DAYS must be a whole number", text)
    multiplier = _parse_part(parts[2], float, "MULTIPLIER must be a number", text)
    segment = _parse_segment(parts[3], text) if len(parts) == 4 else None
    try:
        return Spike(start=start, days=days, multiplier=multiplier, segment=segment)
    except ValueError as error:
        raise ValueError(f"spike {text!r}: {error}") from None


def _parse_part(raw: str, convert: Callable[[str], _T], problem: str, text: str) -> _T:
    try:
        value = convert(raw.strip())
    except ValueError:
        raise ValueError(f"spike {text!r}: {problem}, got {raw!r}") from None
    return value


def _parse_segment(raw: str, text: str) -> tuple[str, str]:
    dimension, equals, value = raw.partition("=")
    if not (equals and dimension.strip() and value.strip()):
        raise ValueError(f"spike {text!r}: the segment must look like DIM=VALUE, got {raw!r}")
    return dimension.strip(), value.strip()


def _date_ms(day: date) -> int:
    return (day - _EPOCH_DATE).days * DAY_MS


class _Clock:
    """Fast RFC 3339 formatting for times that mostly arrive in order (day prefix cached)."""

    __slots__ = ("_day", "_prefix")

    def __init__(self) -> None:
        self._day = -1
        self._prefix = ""

    def format(self, ms: int) -> str:
        day, rest = divmod(ms, DAY_MS)
        if day != self._day:
            self._day = day
            self._prefix = (_EPOCH_DATE + timedelta(days=day)).isoformat() + "T"
        seconds, millis = divmod(rest, 1000)
        minutes, seconds = divmod(seconds, 60)
        hours, minutes = divmod(minutes, 60)
        return f"{self._prefix}{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}Z"


class _Customer:
    __slots__ = ("active", "count", "engagement", "epoch", "id", "plan", "region", "token")

    def __init__(self, customer_id: str, plan: int, region: str, engagement: float) -> None:
        self.id = customer_id
        self.plan = plan  # index into config.plans
        self.region = region
        self.engagement = engagement
        self.active = False
        self.count = 0  # events emitted so far: the event id suffix
        self.epoch = 0  # token of the current active/inactive spell
        self.token = 0  # token of the scheduled churn


class _SortedArrivals:
    """`n` uniform times in [lo, hi) drawn lazily in increasing order (order statistics)."""

    __slots__ = ("_hi", "_lo", "_position", "_remaining")

    def __init__(self, count: int, lo: int, hi: int) -> None:
        self._remaining = count
        self._lo = lo
        self._hi = hi
        self._position = 0.0

    def next(self, rng: random.Random) -> int | None:
        if self._remaining <= 0:
            return None
        self._position += (1.0 - self._position) * (1.0 - rng.random() ** (1.0 / self._remaining))
        self._remaining -= 1
        offset = min(int(self._position * (self._hi - self._lo)), self._hi - self._lo - 1)
        return self._lo + offset


# Heap entry kinds.
_ARRIVE, _RENEW, _CHURN, _ACTIVITY, _PURCHASE, _PLAN_CHANGE, _REACTIVATE = range(7)
_Entry = tuple[int, int, int, Any, int]  # (time ms, sequence, kind, customer or arrivals, token)


class _Hazard:
    """Churn hazard per (plan, region) as a piecewise-constant function of time."""

    def __init__(self, config: SimulationConfig) -> None:
        self._config = config
        self._boundaries = sorted(
            {spike.start_ms for spike in config.spikes} | {spike.end_ms for spike in config.spikes}
        )
        self._rates: dict[tuple[int, str], list[float]] = {}

    def _rates_for(self, plan: int, region: str) -> list[float]:
        key = (plan, region)
        if key not in self._rates:
            self._rates[key] = [
                self._rate(plan, region, moment)
                for moment in [self._first_moment(), *self._boundaries]
            ]  # the rate before the first boundary, then from each boundary on
        return self._rates[key]

    def _first_moment(self) -> int:
        return self._boundaries[0] - 1 if self._boundaries else 0

    def _rate(self, plan: int, region: str, moment: int) -> float:
        """Hazard (per ms) in effect from `moment` on until the next boundary."""
        plan_spec = self._config.plans[plan]
        probability = self._config.churn_probability * plan_spec.churn_factor
        for spike in self._config.spikes:
            if spike.start_ms <= moment < spike.end_ms and spike.applies_to(plan_spec.name, region):
                probability *= spike.multiplier
        return -math.log1p(-min(probability, MAX_MONTHLY_CHURN)) / MONTH_MS

    def churn_time(self, plan: int, region: str, now: int, budget: float) -> int | None:
        """When the integrated hazard from `now` reaches `budget` (an Exp(1) draw)."""
        rates = self._rates_for(plan, region)
        index = bisect_right(self._boundaries, now)
        moment = float(now)
        while index < len(self._boundaries):
            span = self._boundaries[index] - moment
            if rates[index] > 0 and rates[index] * span >= budget:
                return int(moment + budget / rates[index]) + 1
            budget -= rates[index] * span
            moment = self._boundaries[index]
            index += 1
        if rates[index] <= 0:
            return None
        return int(moment + budget / rates[index]) + 1


class _World:
    """The customers and their pending events; `run()` yields events in event-time order."""

    def __init__(self, config: SimulationConfig) -> None:
        self._config = config
        self._rng = random.Random(config.seed)
        self._clock = _Clock()
        self._hazard = _Hazard(config)
        self._heap: list[_Entry] = []
        self._sequence = 0
        self._tokens = 0
        self._arrived = 0
        self._id_width = max(6, len(str(config.customers)))
        self._plan_cumulative = list(accumulate(plan.weight for plan in config.plans))
        self._region_names = [name for name, _ in config.regions]
        self._region_cumulative = list(accumulate(weight for _, weight in config.regions))
        self._per_ms = {
            _ACTIVITY: config.activity_rate / DAY_MS,
            _PURCHASE: config.purchase_rate / DAY_MS,
            _PLAN_CHANGE: -math.log1p(-config.plan_change_probability) / MONTH_MS,
        }
        self._schedule_arrivals()

    def _schedule_arrivals(self) -> None:
        config = self._config
        initial = round(config.customers * config.initial_share)
        start, end = config.start_ms, config.end_ms
        for count, hi in ((initial, min(end, start + DAY_MS)), (config.customers - initial, end)):
            arrivals = _SortedArrivals(count, start, hi)
            self._next_arrival(arrivals)

    def _push(self, time_ms: int, kind: int, subject: Any, token: int) -> None:
        self._sequence += 1
        heapq.heappush(self._heap, (time_ms, self._sequence, kind, subject, token))

    def _new_token(self) -> int:
        self._tokens += 1
        return self._tokens

    def _next_arrival(self, arrivals: _SortedArrivals) -> None:
        time_ms = arrivals.next(self._rng)
        if time_ms is not None:
            self._push(time_ms, _ARRIVE, arrivals, 0)

    def _pick(self, cumulative: list[float]) -> int:
        return min(
            bisect_right(cumulative, self._rng.random() * cumulative[-1]), len(cumulative) - 1
        )

    def run(self) -> Iterator[tuple[int, Event]]:
        """(event time ms, event) in event-time order."""
        end = self._config.end_ms
        heap = self._heap
        while heap and heap[0][0] < end:
            time_ms, _, kind, subject, token = heapq.heappop(heap)
            event = self._handle(time_ms, kind, subject, token)
            if event is not None:
                yield time_ms, event

    def _handle(self, time_ms: int, kind: int, subject: Any, token: int) -> Event | None:
        if kind == _ARRIVE:
            return self._arrive(time_ms, subject)
        customer: _Customer = subject
        if kind == _CHURN:
            return self._churn(time_ms, customer) if token == customer.token else None
        if token != customer.epoch:
            return None  # scheduled in an earlier spell or before a plan change: stale
        if kind == _ACTIVITY:
            return self._activity(time_ms, customer)
        if kind == _PURCHASE:
            return self._purchase(time_ms, customer)
        if kind == _RENEW:
            return self._renew(time_ms, customer)
        if kind == _PLAN_CHANGE:
            return self._plan_change(time_ms, customer)
        return self._reactivate(time_ms, customer)

    def _event(self, customer: _Customer, kind: str, time_ms: int, **fields: Any) -> Event:
        customer.count += 1
        return {
            "event_id": f"{customer.id}-{customer.count}",
            "type": kind,
            "customer_id": customer.id,
            "occurred_at": self._clock.format(time_ms),
            **fields,
        }

    def _attributes(self, customer: _Customer) -> dict[str, str]:
        return {"plan": self._config.plans[customer.plan].name, "region": customer.region}

    def _mrr(self, customer: _Customer) -> float:
        return self._config.plans[customer.plan].mrr

    def _arrive(self, time_ms: int, arrivals: _SortedArrivals) -> Event:
        self._next_arrival(arrivals)
        self._arrived += 1
        customer = _Customer(
            customer_id=f"c{self._arrived:0{self._id_width}d}",
            plan=self._pick(self._plan_cumulative),
            region=self._region_names[self._pick(self._region_cumulative)],
            engagement=self._rng.lognormvariate(-0.32, 0.8),  # mean ~1, long tail
        )
        self._activate(time_ms, customer)
        mrr, attributes = self._mrr(customer), self._attributes(customer)
        return self._event(customer, "subscribed", time_ms, mrr=mrr, attributes=attributes)

    def _activate(self, time_ms: int, customer: _Customer) -> None:
        customer.active = True
        customer.epoch = self._new_token()
        self._push(time_ms + RENEWAL_MS, _RENEW, customer, customer.epoch)
        for kind in (_ACTIVITY, _PURCHASE, _PLAN_CHANGE):
            self._schedule(time_ms, kind, customer)
        self._schedule_churn(time_ms, customer)

    def _schedule(self, time_ms: int, kind: int, customer: _Customer) -> None:
        rate = self._per_ms[kind]
        if kind != _PLAN_CHANGE:
            rate *= customer.engagement
        if rate > 0:
            delay = self._rng.expovariate(rate)
            if delay < self._config.end_ms - time_ms:
                self._push(time_ms + 1 + int(delay), kind, customer, customer.epoch)

    def _schedule_churn(self, time_ms: int, customer: _Customer) -> None:
        customer.token = self._new_token()
        budget = self._rng.expovariate(1.0)
        when = self._hazard.churn_time(customer.plan, customer.region, time_ms, budget)
        if when is not None and when < self._config.end_ms:
            self._push(when, _CHURN, customer, customer.token)

    def _activity(self, time_ms: int, customer: _Customer) -> Event:
        self._schedule(time_ms, _ACTIVITY, customer)
        return self._event(customer, "activity", time_ms)

    def _purchase(self, time_ms: int, customer: _Customer) -> Event:
        self._schedule(time_ms, _PURCHASE, customer)
        amount = round(self._rng.lognormvariate(3.2, 0.9), 2)
        return self._event(customer, "purchase", time_ms, amount=amount)

    def _renew(self, time_ms: int, customer: _Customer) -> Event | None:
        self._push(time_ms + RENEWAL_MS, _RENEW, customer, customer.epoch)
        mrr = self._mrr(customer)
        return self._event(customer, "renewed", time_ms, mrr=mrr) if mrr > 0 else None

    def _plan_change(self, time_ms: int, customer: _Customer) -> Event | None:
        last = len(self._config.plans) - 1
        if last == 0:
            return None
        up = customer.plan == 0 or (customer.plan < last and self._rng.random() < 0.55)
        customer.plan += 1 if up else -1
        # A new plan means a new churn hazard and a new renewal amount: restart the clocks.
        customer.epoch = self._new_token()
        self._push(time_ms + RENEWAL_MS, _RENEW, customer, customer.epoch)
        for kind in (_ACTIVITY, _PURCHASE, _PLAN_CHANGE):
            self._schedule(time_ms, kind, customer)
        self._schedule_churn(time_ms, customer)
        attributes = {"plan": self._config.plans[customer.plan].name}
        return self._event(
            customer, "plan_changed", time_ms, mrr=self._mrr(customer), attributes=attributes
        )

    def _churn(self, time_ms: int, customer: _Customer) -> Event:
        customer.active = False
        customer.epoch = self._new_token()
        customer.token = 0
        comes_back = self._rng.random() < self._config.reactivation_probability
        if comes_back and self._config.reactivation_mean_days > 0:
            delay = self._rng.expovariate(1.0 / (self._config.reactivation_mean_days * DAY_MS))
            if delay < self._config.end_ms - time_ms:
                self._push(time_ms + 1 + int(delay), _REACTIVATE, customer, customer.epoch)
        return self._event(customer, "churned", time_ms)

    def _reactivate(self, time_ms: int, customer: _Customer) -> Event:
        if self._rng.random() < 0.3:  # some come back on a different plan
            customer.plan = self._pick(self._plan_cumulative)
        self._activate(time_ms, customer)
        mrr, attributes = self._mrr(customer), self._attributes(customer)
        return self._event(customer, "reactivated", time_ms, mrr=mrr, attributes=attributes)


def _deliver(events: Iterator[tuple[int, Event]], config: SimulationConfig) -> Iterator[Event]:
    """Add delivery noise: late events (held back in event time) and duplicates."""
    rng = random.Random(f"delivery-{config.seed}")
    late_share, duplicate_share = config.out_of_order_fraction, config.duplicate_fraction
    max_delay_ms = max(1, int(config.max_delay_seconds * 1000))
    held: list[tuple[int, int, Event]] = []  # (release time, sequence, event)
    recent: list[Event] = []
    sequence = 0
    for now, event in events:
        if late_share and rng.random() < late_share:
            sequence += 1
            heapq.heappush(held, (now + rng.randint(1, max_delay_ms), sequence, event))
            continue
        while held and held[0][0] <= now:
            yield from _with_duplicates(heapq.heappop(held)[2], recent, rng, duplicate_share)
        yield from _with_duplicates(event, recent, rng, duplicate_share)
    while held:
        yield from _with_duplicates(heapq.heappop(held)[2], recent, rng, duplicate_share)


def _with_duplicates(
    event: Event, recent: list[Event], rng: random.Random, share: float
) -> Iterator[Event]:
    """Yield `event`, preceded by re-emissions of recent events so that `share` of all
    delivered messages are duplicates (a geometric number before each new event)."""
    if share:
        while recent and rng.random() < share:
            yield dict(recent[rng.randrange(len(recent))])
        if len(recent) < _DUPLICATE_POOL:
            recent.append(event)
        else:
            recent[rng.randrange(_DUPLICATE_POOL)] = event
    yield event


def generate_events(config: SimulationConfig) -> Iterator[Event]:
    """Lazily yield the simulated events in delivery order (see the module doc)."""
    world = _World(config).run()
    if config.out_of_order_fraction or config.duplicate_fraction:
        return _deliver(world, config)
    return (event for _, event in world)
