"""A restore that takes longer than the group session timeout (README, Guarantees).

The customers table is restored in bulk inside faust's rebalance callback, which faust
reports as a "Task timed out" after a few seconds without cancelling it. The restore must
run to its end once, and the worker then process exactly. The ingest stage joins the
input's group meanwhile and reads once the tables are restored. (The group membership itself
is kept by faust's consumer thread, which heartbeats while the callback runs; the
embedded broker would not expire a lone member anyway: README, Guarantees.)
"""

from __future__ import annotations

from pathlib import Path

from stream.broker import create_topics, standard_topics
from tests.integration.kafka_io import (
    WorkerProcess,
    converge,
    expected_records,
    produce,
    reliability_settings,
    simulated,
)

SESSION_TIMEOUT_S = 6
RESTORE_S = 3 * SESSION_TIMEOUT_S
SLOW_RESTORE = {
    "PYTHONPATH": str(Path(__file__).parent / "slow_restore"),
    "SLOW_RESTORE_SECONDS": str(RESTORE_S),
}


async def test_a_restore_longer_than_the_session_timeout_keeps_the_worker_in_its_group(
    broker, topic_prefix, tmp_path
):
    settings = reliability_settings(
        topic_prefix,
        broker.url,
        tmp_path,
        store="rocksdb://",
        session_timeout_seconds=SESSION_TIMEOUT_S,
    )
    await create_topics(broker.bootstrap, standard_topics(settings))
    raw = simulated(customers=80, days=60, seed=23)
    first, second = raw[: len(raw) // 2], raw[len(raw) // 2 :]
    log_path = tmp_path / "worker.log"
    worker = WorkerProcess(settings, log_path).start()
    try:
        await produce(broker.bootstrap, settings.input_topic, first)
        await converge(broker.bootstrap, settings.output_topic, expected_records(first), 180)
        worker.kill()  # the next start discards the local tables: a real restore

        worker = WorkerProcess(settings, log_path, extra_env=SLOW_RESTORE).start()
        await produce(broker.bootstrap, settings.input_topic, second)
        await converge(broker.bootstrap, settings.output_topic, expected_records(raw), 240)
        worker.assert_running()
    finally:
        worker.stop()
    slow_start = worker.log_text().split("===== start ")[-1]
    assert "discarding the local tables" in slow_start, slow_start[-3000:]
    assert slow_start.count("slow restore of customers") == 1, (
        "restored more than once: the worker left its group during the restore\n"
        + slow_start[-3000:]
    )
    assert "customers: restored" in slow_start, slow_start[-3000:]
    # the input's group joined while the tables restored, its reading begun once after
    joined = slow_start.index(f"Joined group '{settings.app_id}-ingest'")
    assert joined < slow_start.index("[^---Recovery]: Worker ready"), slow_start[-3000:]
    assert slow_start.count("ingest consuming") == 1, slow_start[-3000:]
