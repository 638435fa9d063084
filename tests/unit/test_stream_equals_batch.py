"""Properties: whatever the arrival order, duplicates and batching, the streaming path's
latest records equal the batch computation; segment rows sum to `all`; rates are sane."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from itertools import pairwise

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.batch import compute_records
from stream.events import compact, parse_event
from stream.formulas import COUNT_FIELDS
from stream.local_pipeline import LocalPipeline
from tests.compare import differences

DIMENSIONS = ("plan",)
START = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
DAY = 86_400_000
TYPES = ["subscribed", "renewed", "plan_changed", "churned", "reactivated", "purchase", "activity"]
RATES = [
    "churn_rate",
    "retention_rate",
    "churn_rate_with_new",
    "repeat_purchase_rate",
    "monthly_churn_rate",
    "annual_churn_rate",
]

# Event times: mostly arbitrary milliseconds, sometimes exactly midnight (window edges).
times = st.one_of(
    st.integers(min_value=0, max_value=120 * DAY - 1),
    st.integers(min_value=0, max_value=119).map(lambda day: day * DAY),
).map(lambda offset: START + offset)


@st.composite
def an_event(draw, customer: str, number: int) -> dict:
    kind = draw(st.sampled_from(TYPES))
    body = {
        "event_id": f"{customer}-{number}",
        "type": kind,
        "customer_id": customer,
        "occurred_at": datetime.fromtimestamp(draw(times) / 1000, tz=UTC).isoformat(),
    }
    if kind in ("subscribed", "reactivated", "plan_changed", "renewed") and draw(st.booleans()):
        body["mrr"] = draw(st.sampled_from([0, 9.99, 19.5, 49, 199]))
    if kind == "purchase":
        body["amount"] = draw(st.sampled_from([1, 12.34, 80]))
    if draw(st.integers(0, 3)) == 0:
        body["attributes"] = {"plan": draw(st.sampled_from(["free", "pro", "team"]))}
    return body


@st.composite
def histories(draw) -> list[bytes]:
    events = []
    for customer_number in range(draw(st.integers(1, 6))):
        customer = f"c{customer_number}"
        for number in range(draw(st.integers(1, 8))):
            events.append(orjson.dumps(draw(an_event(customer, number))))
    return events


@st.composite
def deliveries(draw, events: list[bytes]) -> list[list[bytes]]:
    """The same events shuffled, some repeated, cut into batches."""
    repeats = draw(st.lists(st.sampled_from(events), max_size=len(events)))
    delivered = draw(st.permutations(events + repeats))
    cuts = sorted(draw(st.lists(st.integers(0, len(delivered)), max_size=6)))
    bounds = [0, *cuts, len(delivered)]
    return [delivered[a:b] for a, b in pairwise(bounds) if b > a]


def batch_records(events: list[bytes], inactivity_days: int | None) -> dict[str, dict]:
    parsed = [compact(parse_event(raw), DIMENSIONS) for raw in events]
    records = compute_records(parsed, DIMENSIONS, inactivity_days=inactivity_days)
    return {
        f"{r['window']}/{r['dimension']}/{r['segment']}/{r['window_start']}": r for r in records
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), inactivity_days=st.sampled_from([None, None, 10]))
def test_stream_equals_batch_whatever_the_delivery(data, inactivity_days):
    events = data.draw(histories())
    batches = data.draw(deliveries(events))
    pipeline = LocalPipeline(dimensions=DIMENSIONS, inactivity_days=inactivity_days, partitions=3)
    latest = pipeline.run(batches)
    assert differences(latest, batch_records(events, inactivity_days)) == []


def _sums_by_window(records: dict[str, dict], dimension: str) -> dict[tuple, list[int]]:
    sums: dict[tuple, list[int]] = defaultdict(lambda: [0] * len(COUNT_FIELDS))
    for record in records.values():
        if record["dimension"] == dimension:
            key = (record["window"], record["window_start"])
            for i, name in enumerate(COUNT_FIELDS):
                sums[key][i] += round(record[name] * 1_000_000)
    return sums


@settings(max_examples=100, deadline=None)
@given(events=histories())
def test_segment_rows_sum_to_all_and_rates_are_within_bounds(events):
    latest = LocalPipeline(dimensions=DIMENSIONS).run([events])
    total = _sums_by_window(latest, "all")
    by_plan = _sums_by_window(latest, "plan")
    assert {k: v for k, v in by_plan.items() if any(v)} == {
        k: v for k, v in total.items() if any(v)
    }
    for record in latest.values():
        for name in RATES:
            value = record[name]
            assert value is None or 0.0 <= value <= 1.0, (name, record)
        if record["customers_start"]:
            assert record["retention_rate"] == (
                (record["customers_start"] - record["churned_customers"])
                / record["customers_start"]
            )
            acquired_still_active = (
                record["customers_end"] - record["customers_start"] + record["churned_customers"]
            )
            assert (
                0
                <= acquired_still_active
                <= record["new_customers"] + record["reactivated_customers"]
            )
