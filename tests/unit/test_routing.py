"""The ingest stage's routing of a raw batch (stream/routing.py), beyond finality."""

from __future__ import annotations

from stream.routing import InputRecord, route_batch
from tests.builders import event, iso

NOW_MS = 1_800_000_000_000
DAY = iso(2026, 3, 1)


def test_valid_events_are_counted_by_type_across_partitions_and_invalid_ones_are_not():
    values = [
        event("c1", "subscribed", DAY, mrr=10),
        event("c2", "subscribed", DAY, mrr=20),
        event("c1", "purchase", DAY, amount=5),
        event("c3", "activity", DAY),
        event("c3", "activity", DAY),
        event("c3", "activity", DAY),
        b"not json",
        event("c4", "no_such_type", DAY),
    ]
    records = [InputRecord(0, offset, value) for offset, value in enumerate(values)]
    routed = route_batch(records, ("plan",), 4, NOW_MS, 60_000)
    assert routed.counts_by_type == {"subscribed": 2, "purchase": 1, "activity": 3}
    assert routed.valid == 6
    assert len(routed.rejected) == 2
    assert len(routed.by_partition) > 1, "the test spans several partitions"
