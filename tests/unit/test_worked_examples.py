"""The issue's worked examples and the boundary rules, through the streaming path."""

import pytest

from stream.local_pipeline import LocalPipeline
from tests.builders import event, iso
from tests.compare import differences


def run(events, dimensions=(), batches=1, **options):
    pipeline = LocalPipeline(dimensions=dimensions, **options)
    size = max(1, len(events) // batches)
    return pipeline.run([events[i : i + size] for i in range(0, len(events), size)])


def record(latest, window, start, dimension="all", segment="all"):
    return latest[f"{window}/{dimension}/{segment}/{start}"]


def population(prefix, size, when, mrr=10.0, **fields):
    return [event(f"{prefix}{n}", "subscribed", when, mrr=mrr, **fields) for n in range(size)]


def churns(prefix, size, when):
    return [event(f"{prefix}{n}", "churned", when) for n in range(size)]


@pytest.mark.parametrize(
    ("at_start", "lost", "window", "start", "churn_date", "expected"),
    [
        (100, 5, "month", "2026-03-01T00:00:00+00:00", iso(2026, 3, 10), 0.05),
        (1000, 50, "month", "2026-03-01T00:00:00+00:00", iso(2026, 3, 20), 0.05),
        (500, 50, "quarter", "2026-04-01T00:00:00+00:00", iso(2026, 6, 1), 0.10),
    ],
)
def test_churn_rate_examples(at_start, lost, window, start, churn_date, expected):
    events = population("c", at_start, iso(2026, 1, 15)) + churns("c", lost, churn_date)
    latest = run(events)
    row = record(latest, window, start)
    assert row["customers_start"] == at_start
    assert row["churned_customers"] == lost
    assert row["churn_rate"] == pytest.approx(expected, abs=1e-12)


def test_retention_example_100_start_30_new_10_lost_120_end():
    events = (
        population("old", 100, iso(2026, 2, 10))
        + population("new", 30, iso(2026, 3, 5))
        + churns("old", 10, iso(2026, 3, 20))
    )
    row = record(run(events, batches=3), "month", "2026-03-01T00:00:00+00:00")
    assert (row["customers_start"], row["new_customers"], row["churned_customers"]) == (100, 30, 10)
    assert row["customers_end"] == 120
    assert row["retention_rate"] == pytest.approx(0.90)
    assert row["net_growth_rate"] == pytest.approx(0.20)
    assert row["churn_rate_with_new"] == pytest.approx(10 / 130)


def test_repeat_purchase_example_500_purchasers_150_repeat():
    events = []
    for n in range(500):
        events.append(event(f"p{n}", "purchase", iso(2026, 3, 3), amount=20.0))
        if n < 150:
            events.append(event(f"p{n}", "purchase", iso(2026, 3, 9), amount=10.0))
    row = record(run(events), "month", "2026-03-01T00:00:00+00:00")
    assert row["purchasing_customers"] == 500
    assert row["repeat_purchasers"] == 150
    assert row["repeat_purchase_rate"] == pytest.approx(0.30)
    assert row["purchases"] == 650
    assert row["average_purchase_value"] == pytest.approx((500 * 20 + 150 * 10) / 650)


def test_event_at_midnight_belongs_to_the_window_it_starts():
    events = [
        event("a", "subscribed", iso(2026, 3, 1), mrr=5),
        event("b", "subscribed", iso(2026, 2, 1), mrr=5),
        event("b", "churned", iso(2026, 4, 1)),
    ]
    latest = run(events)
    march = record(latest, "month", "2026-03-01T00:00:00+00:00")
    assert (march["customers_start"], march["new_customers"], march["customers_end"]) == (1, 1, 2)
    assert march["churned_customers"] == 0  # b churns at exactly April 1: April's churn
    april = record(latest, "month", "2026-04-01T00:00:00+00:00")
    assert (april["customers_start"], april["churned_customers"], april["customers_end"]) == (
        2,
        1,
        1,
    )


def test_reactivation_is_not_new_and_mrr_movements():
    events = [
        event("a", "subscribed", iso(2026, 1, 5), mrr=10),
        event("a", "churned", iso(2026, 1, 20)),
        event("a", "reactivated", iso(2026, 2, 3), mrr=30),
        event("b", "subscribed", iso(2026, 1, 5), mrr=50),
        event("b", "plan_changed", iso(2026, 2, 10), mrr=80),
        event("c", "subscribed", iso(2026, 1, 5), mrr=40),
        event("c", "plan_changed", iso(2026, 2, 11), mrr=25),
        event("d", "subscribed", iso(2026, 1, 6), mrr=7),
        event("d", "churned", iso(2026, 2, 12)),
        event("e", "subscribed", iso(2026, 2, 13), mrr=9),
    ]
    feb = record(run(events), "month", "2026-02-01T00:00:00+00:00")
    assert feb["customers_start"] == 3  # b, c, d (a churned in January)
    assert (feb["new_customers"], feb["reactivated_customers"]) == (1, 1)
    assert (feb["churned_customers"], feb["customers_end"]) == (1, 4)
    assert feb["mrr_start"] == 97.0
    assert feb["mrr_end"] == 30 + 80 + 25 + 9
    assert (feb["expansion_mrr"], feb["contraction_mrr"], feb["churned_mrr"]) == (30.0, 15.0, 7.0)
    assert (feb["new_mrr"], feb["reactivation_mrr"], feb["retained_mrr"]) == (9.0, 30.0, 105.0)
    assert feb["gross_mrr_churn_rate"] == pytest.approx((7 + 15) / 97)
    assert feb["net_revenue_retention"] == pytest.approx(105 / 97)


def test_segment_is_taken_at_window_start_and_rows_sum_to_all():
    events = [
        event("a", "subscribed", iso(2026, 1, 5), mrr=10, attributes={"plan": "basic"}),
        event("a", "plan_changed", iso(2026, 2, 10), mrr=30, attributes={"plan": "pro"}),
        event("b", "subscribed", iso(2026, 2, 3), mrr=30, attributes={"plan": "pro"}),
        event("c", "subscribed", iso(2026, 2, 4), mrr=5),
        event("c", "activity", iso(2026, 3, 2)),
    ]
    latest = run(events, dimensions=("plan",))
    feb = "2026-02-01T00:00:00+00:00"
    basic = record(latest, "month", feb, "plan", "basic")
    pro = record(latest, "month", feb, "plan", "pro")
    unknown = record(latest, "month", feb, "plan", "unknown")
    assert (basic["customers_start"], basic["customers_end"], basic["expansion_mrr"]) == (
        1,
        1,
        20.0,
    )
    assert (pro["customers_start"], pro["new_customers"]) == (0, 1)
    assert unknown["new_customers"] == 1
    total = record(latest, "month", feb)
    for field in ("customers_end", "new_customers", "mrr_end", "expansion_mrr"):
        assert basic[field] + pro[field] + unknown[field] == total[field]
    march = record(latest, "month", "2026-03-01T00:00:00+00:00", "plan", "pro")
    assert march["customers_start"] == 2  # a counts as pro from March on


def test_duplicates_and_arrival_order_change_nothing():
    events = [
        event("a", "subscribed", iso(2026, 1, 5), mrr=10, event_id="a1"),
        event("a", "churned", iso(2026, 2, 5), event_id="a2"),
        event("a", "reactivated", iso(2026, 3, 5), mrr=12, event_id="a3"),
    ]
    in_order = run(events)
    shuffled = run([events[2], events[0], events[2], events[1], events[0]], batches=5)
    assert differences(shuffled, in_order, ignore=frozenset({"revision"})) == []


def test_activity_mode_expires_after_inactivity_once_the_watermark_passes():
    events = [
        event("a", "activity", iso(2026, 1, 10)),
        event("b", "purchase", iso(2026, 1, 10), amount=5),
        event("b", "activity", iso(2026, 2, 5)),
        event("z", "activity", iso(2026, 2, 15)),  # moves the watermark to Feb 15
    ]
    latest = run(events, inactivity_days=30)
    feb = record(latest, "month", "2026-02-01T00:00:00+00:00")
    # a expired on Feb 9 (Jan 10 + 30 days); b's expiry (Mar 7) is past the watermark
    assert (feb["customers_start"], feb["churned_customers"], feb["customers_end"]) == (2, 1, 2)
    assert feb["new_customers"] == 1  # z
