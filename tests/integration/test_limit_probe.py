"""scripts/limit_probe.py (README, Benchmark) reads the whole topic once per round."""

from __future__ import annotations

from stream.broker import EmbeddedBroker
from tests.scripts import load_script


async def test_the_probe_reads_every_event_in_each_round_with_its_record_count(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    probe = load_script("limit_probe")
    args = probe.parse_args(
        ["--events", "3000", "--partitions", "2", "--max-records", "100,5000", "--rounds", "3"]
    )
    args.topic = f"{topic_prefix}events"
    rounds = await probe.run(args, broker)
    assert [r.max_records for r in rounds] == [100, 5000, 100]
    for result in rounds:
        assert result.events == 3000
        assert result.seconds > 0 and result.cpu_seconds > 0
        assert result.gc_seconds >= 0 and result.full_collections >= 0
        assert "events/s" in result.row()
