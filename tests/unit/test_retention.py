"""Retention: folding old history into a base changes no metric, and bounds the state."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.customers import History
from stream.local_pipeline import LocalPipeline
from tests.compare import differences
from tests.unit.test_stream_equals_batch import DIMENSIONS, TYPES, batch_records

START = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)
DAY = 86_400_000
RETENTION_DAYS = 20


@st.composite
def long_histories(draw) -> list[tuple[int, bytes]]:
    """(delivery time, event) pairs over ~2.5 years, each event at most 10 days late."""
    events = []
    for customer in range(draw(st.integers(1, 4))):
        for number in range(draw(st.integers(2, 14))):
            when = START + draw(st.integers(0, 900 * DAY))
            kind = draw(st.sampled_from(TYPES))
            body = {
                "event_id": f"c{customer}-{number}",
                "type": kind,
                "customer_id": f"c{customer}",
                "occurred_at": datetime.fromtimestamp(when / 1000, tz=UTC).isoformat(),
            }
            if kind in ("subscribed", "reactivated", "plan_changed") and draw(st.booleans()):
                body["mrr"] = draw(st.sampled_from([5, 20]))
            if kind == "purchase":
                body["amount"] = 3
            if draw(st.integers(0, 3)) == 0:
                body["attributes"] = {"plan": draw(st.sampled_from(["a", "b"]))}
            delivered = when + draw(st.integers(0, 10 * DAY))
            events.append((delivered, orjson.dumps(body)))
    return sorted(events)


@settings(max_examples=120, deadline=None)
@given(deliveries=long_histories(), inactivity_days=st.sampled_from([None, 45]))
def test_pruned_stream_equals_the_full_batch(deliveries, inactivity_days):
    pipeline = LocalPipeline(
        dimensions=DIMENSIONS, inactivity_days=inactivity_days, retention_days=RETENTION_DAYS
    )
    raw = [event for _, event in deliveries]
    latest = pipeline.run([[event] for event in raw])
    assert pipeline.applied + pipeline.duplicates == len(raw)
    assert differences(latest, batch_records(raw, inactivity_days)) == []


def _stored_history(pipeline: LocalPipeline, customer_id: str) -> History:
    return next(
        History.decode(p.stage._store[customer_id])
        for p in pipeline.customers
        if customer_id in p.stage._store
    )


def test_old_history_is_folded_away():
    pipeline = LocalPipeline(dimensions=DIMENSIONS, retention_days=RETENTION_DAYS)
    events = [
        orjson.dumps(
            {
                "event_id": f"e{day}",
                "type": "purchase",
                "customer_id": "c",
                "occurred_at": datetime.fromtimestamp(
                    (START + day * DAY) / 1000, tz=UTC
                ).isoformat(),
                "amount": 1,
            }
        )
        for day in range(0, 800, 10)
    ]
    latest = pipeline.run([[event] for event in events])
    assert differences(latest, batch_records(events, None)) == []
    stored = _stored_history(pipeline, "c")
    kept_days = (800 - 10) - (RETENTION_DAYS + 367)
    assert stored.base is not None
    assert len(stored.rows) <= kept_days // 10 + 2
    assert stored.base.purchases == 80 - len(stored.rows)  # folded purchases count for repeats


def test_a_folded_purchase_still_makes_a_later_one_a_repeat():
    def at(day: int) -> str:
        return datetime.fromtimestamp((START + day * DAY) / 1000, tz=UTC).isoformat()

    def raw(event_id: str, kind: str, day: int, **fields: object) -> bytes:
        body = {"event_id": event_id, "type": kind, "customer_id": "c", "occurred_at": at(day)}
        return orjson.dumps(body | fields)

    events = [
        raw("p1", "purchase", 0, amount=5),
        raw("s1", "subscribed", 790, mrr=10),  # folds p1 into the base when stored
        raw("p2", "purchase", 800, amount=5),  # the second purchase ever: a repeat
    ]
    pipeline = LocalPipeline(dimensions=DIMENSIONS, retention_days=RETENTION_DAYS)
    latest = pipeline.run([[event] for event in events])
    stored = _stored_history(pipeline, "c")
    assert stored.base is not None and stored.base.purchases == 1
    day = latest[f"day/all/all/{at(800)[:10]}T00:00:00+00:00"]
    assert (day["purchasing_customers"], day["repeat_purchasers"]) == (1, 1)
    assert differences(latest, batch_records(events, None)) == []
