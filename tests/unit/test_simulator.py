"""The event simulator: determinism, the input contract, lifecycles, noise, spikes, CLI."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections import Counter, defaultdict
from datetime import date
from itertools import islice
from pathlib import Path

import orjson
import pytest

from stream import simulator_cli
from stream.events import parse_event
from stream.replay import Progress, customer_key
from stream.simulator import (
    DEFAULT_PLANS,
    SimulationConfig,
    Spike,
    generate_events,
    parse_spike,
)

SMALL = SimulationConfig(customers=1000, start=date(2026, 1, 1), days=60, seed=11)
NOISY = dataclasses.replace(SMALL, duplicate_fraction=0.1, out_of_order_fraction=0.1)
PLAN_MRR = {plan.name: plan.mrr for plan in DEFAULT_PLANS}


def _distinct(events: list[dict]) -> dict[str, dict]:
    """First delivery of each event id; asserts that re-deliveries are identical."""
    first: dict[str, dict] = {}
    for event in events:
        assert first.setdefault(event["event_id"], event) == event
    return first


def _histories(events: list[dict]) -> dict[str, list[dict]]:
    by_customer: dict[str, list[dict]] = defaultdict(list)
    for event in _distinct(events).values():
        by_customer[event["customer_id"]].append(event)
    for history in by_customer.values():
        history.sort(key=lambda event: (event["occurred_at"], int(event["event_id"].split("-")[1])))
    return by_customer


@pytest.fixture(scope="module")
def noisy_events() -> list[dict]:
    return list(generate_events(NOISY))


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_events() -> None:
    first = list(islice(generate_events(NOISY), 10_000))
    assert first == list(islice(generate_events(NOISY), 10_000))


def test_other_seed_other_events() -> None:
    other = dataclasses.replace(NOISY, seed=12)
    assert list(islice(generate_events(NOISY), 500)) != list(islice(generate_events(other), 500))


def test_generation_is_lazy() -> None:
    huge = SimulationConfig(customers=10_000_000, days=3650, seed=1)
    started = time.perf_counter()
    events = generate_events(huge)
    assert next(events)["type"] == "subscribed"
    assert time.perf_counter() - started < 0.5


def test_noise_does_not_change_the_world(noisy_events: list[dict]) -> None:
    assert _distinct(noisy_events) == _distinct(list(generate_events(SMALL)))


# --------------------------------------------------------------------------- contract


def test_every_event_satisfies_the_contract(noisy_events: list[dict]) -> None:
    for event in noisy_events:
        parsed = parse_event(orjson.dumps(event))
        assert parsed.event_id == event["event_id"]


def test_events_lie_in_the_period_and_ids_look_right(noisy_events: list[dict]) -> None:
    for event in noisy_events:
        assert "2026-01-01T00:00:00.000Z" <= event["occurred_at"] < "2026-03-02"
        assert event["customer_id"].startswith("c") and len(event["customer_id"]) == 7
        assert event["event_id"].startswith(event["customer_id"] + "-")
    assert len({event["customer_id"] for event in noisy_events}) == SMALL.customers


def test_every_event_type_occurs(noisy_events: list[dict]) -> None:
    types = Counter(event["type"] for event in _distinct(noisy_events).values())
    expected = {"subscribed", "renewed", "plan_changed", "churned", "reactivated", "purchase"}
    assert expected | {"activity"} == set(types)
    assert types["subscribed"] == SMALL.customers
    assert types["activity"] > types["purchase"] > types["churned"] > types["reactivated"]


# --------------------------------------------------------------------------- lifecycles


def _check_history(history: list[dict]) -> None:
    assert history[0]["type"] == "subscribed"
    active, mrr, plan = False, None, None
    for event in history:
        kind = event["type"]
        if kind in ("subscribed", "reactivated"):
            assert not active, f"{kind} while active: {event}"
            active, mrr, plan = True, event["mrr"], event["attributes"]["plan"]
            assert set(event["attributes"]) == {"plan", "region"}
        elif kind == "churned":
            assert active, f"churned while inactive: {event}"
            active = False
        else:
            assert active, f"{kind} while inactive: {event}"
        if kind == "plan_changed":
            assert event["attributes"]["plan"] != plan
            plan, mrr = event["attributes"]["plan"], event["mrr"]
        if kind == "renewed":
            assert mrr is not None and event["mrr"] == mrr > 0
        if kind == "purchase":
            assert event["amount"] >= 0
        assert plan is not None and mrr == PLAN_MRR[plan]


def test_per_customer_lifecycles_are_consistent(noisy_events: list[dict]) -> None:
    histories = _histories(noisy_events)
    assert len(histories) == SMALL.customers
    for history in histories.values():
        assert sum(event["type"] == "subscribed" for event in history) == 1
        _check_history(history)


def test_event_numbers_follow_event_time(noisy_events: list[dict]) -> None:
    for customer, history in _histories(noisy_events).items():
        numbers = [int(event["event_id"].split("-")[1]) for event in history]
        assert numbers == list(range(1, len(history) + 1)), customer


def test_monthly_churn_is_roughly_as_configured() -> None:
    config = SimulationConfig(customers=2500, days=60, seed=3, initial_share=1.0)
    churned = {e["customer_id"] for e in generate_events(config) if e["type"] == "churned"}
    # ~2 months at ~5% a month (plan factors average ~1) for a base present from day 1.
    assert 0.06 < len(churned) / config.customers < 0.14


# --------------------------------------------------------------------------- delivery noise


def test_without_noise_delivery_is_in_time_order() -> None:
    events = list(generate_events(SMALL))
    times = [event["occurred_at"] for event in events]
    assert times == sorted(times)
    assert len({event["event_id"] for event in events}) == len(events)


def test_duplicate_and_late_fractions(noisy_events: list[dict]) -> None:
    seen: set[str] = set()
    duplicates = late = 0
    latest = ""
    for event in noisy_events:
        if event["event_id"] in seen:
            duplicates += 1
            continue
        seen.add(event["event_id"])
        late += event["occurred_at"] < latest
        latest = max(latest, event["occurred_at"])
    assert duplicates / len(noisy_events) == pytest.approx(0.1, abs=0.015)
    assert late / len(seen) == pytest.approx(0.1, abs=0.015)


def test_late_events_stay_within_the_max_delay(noisy_events: list[dict]) -> None:
    latest = ""
    for event in _distinct_deliveries(noisy_events):
        if event["occurred_at"] < latest:
            # max_delay_seconds = 3600: a late event is behind by at most an hour.
            assert _ms(latest) - _ms(event["occurred_at"]) <= 3_600_000
        latest = max(latest, event["occurred_at"])


def _distinct_deliveries(events: list[dict]) -> list[dict]:
    """The events without their re-deliveries (duplicates), in delivery order."""
    return list(_distinct(events).values())


def _ms(text: str) -> int:
    moment = date.fromisoformat(text[:10])
    hours, minutes, seconds = text[11:23].split(":")
    day_ms = (int(hours) * 3600 + int(minutes) * 60) * 1000 + round(float(seconds) * 1000)
    return (moment - date(1970, 1, 1)).days * 86_400_000 + day_ms


# --------------------------------------------------------------------------- spikes

SPIKE = Spike(start=date(2026, 2, 10), days=7, multiplier=6.0)
SPIKE_BASE = dataclasses.replace(NOISY, customers=2000, days=50)


def _churns_by_day(events: list[dict]) -> Counter[str]:
    return Counter(
        event["occurred_at"][:10]
        for event in _distinct(events).values()
        if event["type"] == "churned"
    )


def test_a_spike_raises_churn_inside_its_window_only() -> None:
    base = list(generate_events(SPIKE_BASE))
    spiked = list(generate_events(dataclasses.replace(SPIKE_BASE, spikes=(SPIKE,))))
    window = {f"2026-02-{day:02d}" for day in range(10, 17)}
    base_churn = sum(n for day, n in _churns_by_day(base).items() if day in window)
    spiked_churn = sum(n for day, n in _churns_by_day(spiked).items() if day in window)
    assert spiked_churn > 3 * base_churn > 0

    def before(events: list[dict]) -> dict[str, dict]:
        return {k: e for k, e in _distinct(events).items() if e["occurred_at"] < "2026-02-10"}

    assert before(spiked) == before(base)


def test_a_segment_spike_hits_that_segment() -> None:
    segment_spike = dataclasses.replace(SPIKE, segment=("region", "apac"))
    spiked = list(generate_events(dataclasses.replace(SPIKE_BASE, spikes=(segment_spike,))))
    region = {
        e["customer_id"]: e["attributes"]["region"] for e in spiked if e["type"] == "subscribed"
    }
    in_window = [
        region[e["customer_id"]]
        for e in _distinct(spiked).values()
        if e["type"] == "churned" and "2026-02-10" <= e["occurred_at"] < "2026-02-17"
    ]
    shares = Counter(in_window)
    # apac is 20% of customers; with 6x its churn it makes up most churn in the window.
    assert shares["apac"] > shares["eu"] + shares["us"]


def test_a_spike_for_an_unknown_segment_is_rejected() -> None:
    with pytest.raises(ValueError, match="plan='gold' is not simulated"):
        SimulationConfig(spikes=(dataclasses.replace(SPIKE, segment=("plan", "gold")),))
    with pytest.raises(ValueError, match="dimension must be one of plan, region"):
        SimulationConfig(spikes=(dataclasses.replace(SPIKE, segment=("tier", "x")),))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01:7:5", Spike(date(2026, 3, 1), 7, 5.0)),
        ("2026-03-01:7:5:plan=pro", Spike(date(2026, 3, 1), 7, 5.0, ("plan", "pro"))),
        (" 2026-03-01:14:0.5:region=eu ", Spike(date(2026, 3, 1), 14, 0.5, ("region", "eu"))),
        ("2026-03-01:1:0", Spike(date(2026, 3, 1), 1, 0.0)),
    ],
)
def test_parse_spike(text: str, expected: Spike) -> None:
    assert parse_spike(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must look like START:DAYS:MULTIPLIER"),
        ("2026-03-01", "must look like START:DAYS:MULTIPLIER"),
        ("2026-03-01:7", "must look like START:DAYS:MULTIPLIER"),
        ("2026-03-01:7:5:plan=pro:x", "must look like START:DAYS:MULTIPLIER"),
        ("2026-13-01:7:5", "START must be a date YYYY-MM-DD"),
        ("tomorrow:7:5", "START must be a date YYYY-MM-DD"),
        ("2026-03-01:seven:5", "DAYS must be a whole number"),
        ("2026-03-01:1.5:5", "DAYS must be a whole number"),
        ("2026-03-01:0:5", "days must be at least 1"),
        ("2026-03-01:7:lots", "MULTIPLIER must be a number"),
        ("2026-03-01:7:-2", "multiplier must be a finite number >= 0"),
        ("2026-03-01:7:nan", "multiplier must be a finite number >= 0"),
        ("2026-03-01:7:5:plan", "segment must look like DIM=VALUE"),
        ("2026-03-01:7:5:=pro", "segment must look like DIM=VALUE"),
        ("2026-03-01:7:5:plan=", "segment must look like DIM=VALUE"),
    ],
)
def test_parse_spike_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_spike(text)


# --------------------------------------------------------------------------- CLI


def _simulate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    handler = simulator_cli.configure(parser)
    return handler(parser.parse_args(argv))


def test_cli_output_writes_valid_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "events.jsonl"
    argv = ["--output", str(out), "--start", "2026-01-01", "--days", "30", "--customers", "300"]
    argv += ["--seed", "5", "--limit", "2000", "--spike", "2026-01-10:5:3:plan=pro"]
    argv += ["--duplicates", "0.05", "--out-of-order", "0.05"]
    assert _simulate(argv) == 0
    lines = out.read_bytes().splitlines()
    assert len(lines) == 2000
    for line in lines:
        parse_event(line)
    assert "simulate: 2000 events written to" in capsys.readouterr().out
    config = SimulationConfig(
        customers=300,
        start=date(2026, 1, 1),
        days=30,
        seed=5,
        duplicate_fraction=0.05,
        out_of_order_fraction=0.05,
        spikes=(parse_spike("2026-01-10:5:3:plan=pro"),),
    )
    assert [orjson.loads(line) for line in lines] == list(islice(generate_events(config), 2000))


def test_cli_rejects_a_bad_spike(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _simulate(["--output", "x.jsonl", "--spike", "2026-03-01:7"])
    assert exit_info.value.code == 2
    assert "must look like START:DAYS:MULTIPLIER" in capsys.readouterr().err


def test_cli_reports_an_unwritable_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _simulate(["--output", str(tmp_path / "missing" / "x.jsonl"), "--limit", "5"]) == 1
    assert "simulate: cannot write" in capsys.readouterr().err


def test_cli_rejects_an_unknown_segment(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--output", str(tmp_path / "x.jsonl"), "--spike", "2026-03-01:7:5:plan=gold"]
    assert _simulate(argv) == 2
    assert "plan='gold' is not simulated" in capsys.readouterr().err


# --------------------------------------------------------------------------- replay helpers


@pytest.mark.parametrize(
    ("line", "key"),
    [
        (b'{"customer_id": "c000001", "type": "x"}', b"c000001"),
        (b'{"customer_id": 5}', None),
        (b"[1, 2]", None),
        (b"not json", None),
        (b"\xff\xfe", None),
    ],
)
def test_replay_key_is_the_customer_id_of_an_object(line: bytes, key: bytes | None) -> None:
    assert customer_key(line) == key


def test_replay_progress_line() -> None:
    assert Progress(200, None).render(50, 2.0) == "replay: 50/200 lines (25%)  25 events/s"
    assert Progress(None, None).render(50, 0.0) == "replay: 50 lines  0 events/s"
