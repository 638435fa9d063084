"""Static group membership (CHURN_GROUP_INSTANCE_ID): a worker SIGKILLed and restarted under
the same name takes its partitions back as the same member, without the rebalance that waits
for the killed member's session to expire, and the results stay exact."""

from __future__ import annotations

import re

from stream.broker import create_topics, standard_topics
from tests.integration.kafka_io import (
    WorkerProcess,
    converge,
    expected_records,
    produce,
    reliability_settings,
    simulated,
)

JOINED = re.compile(r"Joined group '([^']+)' \(generation (\d+)\) with member_id (\S+)")


def _joins(log: str) -> list[tuple[str, int, str]]:
    """(group, generation, member id) of each join, in order."""
    return [(group, int(generation), member) for group, generation, member in JOINED.findall(log)]


async def test_a_killed_worker_restarted_under_its_name_rejoins_without_a_rebalance(
    broker, topic_prefix, tmp_path
):
    settings = reliability_settings(
        topic_prefix, broker.url, tmp_path, store="rocksdb://", group_instance_id="worker-a"
    )
    await create_topics(broker.bootstrap, standard_topics(settings))
    raw = simulated(customers=80, days=60, seed=5)
    first, second = raw[: len(raw) // 2], raw[len(raw) // 2 :]
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        await produce(broker.bootstrap, settings.input_topic, first)
        await converge(broker.bootstrap, settings.output_topic, expected_records(first), 180)
        worker.kill()

        worker.start()
        await produce(broker.bootstrap, settings.input_topic, second)
        await converge(broker.bootstrap, settings.output_topic, expected_records(raw), 180)
        worker.assert_running()
    finally:
        worker.stop()
    starts = worker.log_text().split("===== start ")
    before, after = _joins(starts[1]), _joins(starts[2])
    groups = {settings.app_id: "worker-a-", f"{settings.app_id}-ingest": "worker-a-ingest-"}
    assert sorted(group for group, _, _ in before) == sorted(groups), before
    assert sorted(group for group, _, _ in after) == sorted(groups), (
        "the restarted worker joined a group more than once: a rebalance\n" + starts[2][-3000:]
    )
    for group, generation, member in after:
        assert member.startswith(groups[group]), member
        assert (group, generation) in {(g, n) for g, n, _ in before}, (
            f"{group}: a new generation after the restart\n" + starts[2][-3000:]
        )
