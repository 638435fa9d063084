"""Finality, late corrections, lagging partitions, emission and the segment cap."""

from stream.local_pipeline import LocalPipeline
from tests.builders import event, iso

FEB = "month/all/all/2026-02-01T00:00:00+00:00"


def test_window_becomes_final_after_grace_and_a_late_event_emits_a_revision():
    pipeline = LocalPipeline(grace_seconds=3600)
    pipeline.run([[event("a", "subscribed", iso(2026, 2, 3), mrr=10)]])
    assert pipeline.latest[FEB]["final"] is False
    pipeline.run([[event("b", "activity", iso(2026, 3, 1, 0, 59))]])
    assert pipeline.latest[FEB]["final"] is False  # watermark < end + grace
    pipeline.run([[event("b", "activity", iso(2026, 3, 1, 1, 0))]])
    final = pipeline.latest[FEB]
    assert final["final"] is True
    revision = final["revision"]
    pipeline.run([[event("c", "subscribed", iso(2026, 2, 20), mrr=5)]])  # late
    corrected = pipeline.latest[FEB]
    assert corrected["final"] is True
    assert corrected["revision"] == revision + 1
    assert corrected["new_customers"] == 2
    assert corrected["mrr_end"] == 15.0


def test_unchanged_windows_are_not_re_emitted():
    pipeline = LocalPipeline()
    pipeline.run([[event("a", "subscribed", iso(2026, 2, 3), mrr=10)]])
    emitted = list(pipeline.aggregator.flush())
    assert emitted == []


def test_a_lagging_partition_holds_finality_back_instead_of_making_events_late():
    pipeline = LocalPipeline(grace_seconds=0)
    pipeline.ingest([event("a", "subscribed", iso(2026, 2, 3))], input_partition=0)
    pipeline.ingest([event("b", "subscribed", iso(2026, 4, 3))], input_partition=1)
    pipeline.flush()
    assert pipeline.latest[FEB]["final"] is False  # partition 0 is still in February
    assert pipeline.latest[FEB]["watermark"].startswith("2026-02-03")
    pipeline.ingest([event("c", "subscribed", iso(2026, 2, 25))], input_partition=0)
    pipeline.ingest([event("a", "activity", iso(2026, 3, 2))], input_partition=0)
    pipeline.flush()
    feb = pipeline.latest[FEB]
    assert feb["final"] is True and feb["new_customers"] == 2


def test_segment_values_over_the_cap_go_to_other():
    pipeline = LocalPipeline(dimensions=("plan",), max_segments=2)
    events = [
        event(f"c{n}", "subscribed", iso(2026, 2, 3 + n), attributes={"plan": f"p{n}"})
        for n in range(4)
    ]
    latest = pipeline.run([[e] for e in events])
    plans = {r["segment"] for r in latest.values() if r["dimension"] == "plan"}
    assert plans == {"p0", "p1", "other"}
    other = latest["month/plan/other/2026-02-01T00:00:00+00:00"]
    assert other["new_customers"] == 2
    assert latest[FEB]["new_customers"] == 4


def test_ingest_dead_letters_events_beyond_retention():
    from stream.routing import InputRecord, route_batch

    old = event("a", "activity", iso(2026, 1, 1))
    recent = event("a", "activity", iso(2026, 3, 1))
    routed = route_batch(
        [InputRecord(0, 0, old), InputRecord(0, 1, recent)],
        (),
        partitions=2,
        now_ms=10**15,
        max_future_ms=0,
        oldest_ms=1771000000000,  # 2026-02-13
    )
    assert [r.reason for r in routed.rejected] == ["beyond_retention"]
    assert routed.valid == 1
