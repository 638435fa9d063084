"""Rebalance: two workers in one group; one is killed mid-stream and the survivor takes over
its partitions and their state (from the changelogs); then a new worker joins and the
partitions spread again. Results stay exactly the batch result throughout."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from stream.broker import create_topics, free_port, standard_topics
from tests.integration.kafka_io import (
    WorkerProcess,
    assigned_partitions,
    converge,
    expected_records,
    produce_paced,
    reliability_settings,
    sample_sum,
    simulated,
)


def member(settings, tmp_path, name: str) -> WorkerProcess:
    own = settings.model_copy(
        update={"metrics_port": free_port(), "data_dir": tmp_path / f"data-{name}"}
    )
    return WorkerProcess(own, tmp_path / f"{name}.log")


def topics_of(settings) -> tuple[str, ...]:
    return (settings.input_topic, settings.customer_topic, settings.delta_topic)


def assignment(worker: WorkerProcess, topic: str) -> set[int]:
    try:
        return assigned_partitions(worker.scrape(), topic)
    except OSError:
        return set()


async def wait_for_spread(
    workers: list[WorkerProcess], topics: tuple[str, ...], partitions: int, timeout: float
) -> dict[str, list[set[int]]]:
    """Until, for every topic, the workers' partitions are disjoint, non-empty and cover
    all partitions; returns the assignment seen."""
    deadline = time.monotonic() + timeout
    seen: dict[str, list[set[int]]] = {}
    while time.monotonic() < deadline:
        for worker in workers:
            worker.assert_running()
        seen = {topic: [assignment(worker, topic) for worker in workers] for topic in topics}
        if all(_spread(parts, partitions) for parts in seen.values()):
            return seen
        await asyncio.sleep(0.5)
    raise AssertionError(f"partitions did not spread over {len(workers)} workers: {seen}")


def _spread(parts: list[set[int]], partitions: int) -> bool:
    union = set().union(*parts)
    disjoint = sum(len(p) for p in parts) == len(union)
    return all(parts) and disjoint and union == set(range(partitions))


async def wait_until_reading(worker: WorkerProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.assert_running()
        if sample_sum(worker.scrape(), "churn_consumed_messages_total") > 0:
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"worker read nothing in {timeout}s\n{worker.log_tail()}")


@pytest.mark.parametrize(
    ("store", "standby_replicas"), [("memory://", 0), ("rocksdb://", 0), ("memory://", 1)]
)
async def test_failover_then_rebalance_keep_results_exact(
    broker, topic_prefix, tmp_path, store, standby_replicas
):
    """With rocksdb:// the partitions that move are restored in bulk (stream/tables.py);
    with a standby replica the survivor already holds a warm copy."""
    settings = reliability_settings(
        topic_prefix, broker.url, tmp_path, store=store, standby_replicas=standby_replicas
    )
    await create_topics(broker.bootstrap, standard_topics(settings))
    raw = simulated(customers=300, days=120, seed=31)
    cut = len(raw) * 3 // 5
    first, rest = raw[:cut], raw[cut:]
    topics, partitions = topics_of(settings), settings.partitions
    a, b, c = (member(settings, tmp_path, name) for name in "abc")
    producing = None
    timings = {}
    try:
        a.start()
        b.start()
        await a.wait_for_metrics()
        await b.wait_for_metrics()
        spread = await wait_for_spread([a, b], topics, partitions, timeout=120)
        producing = asyncio.ensure_future(
            produce_paced(broker.bootstrap, settings.input_topic, first, per_second=len(first) / 30)
        )
        await wait_until_reading(a)
        await wait_until_reading(b)
        await asyncio.sleep(3)
        killed_at = time.monotonic()
        a.kill()  # mid-stream: SIGKILL, no goodbye to the group
        await wait_for_spread([b], topics, partitions, timeout=90)
        timings["failover_s"] = round(time.monotonic() - killed_at, 1)
        await producing
        await converge(broker.bootstrap, settings.output_topic, expected_records(first), 180)

        joined_at = time.monotonic()
        c.start()
        await c.wait_for_metrics()
        respread = await wait_for_spread([b, c], topics, partitions, timeout=120)
        timings["rebalance_s"] = round(time.monotonic() - joined_at, 1)
        producing = asyncio.ensure_future(
            produce_paced(broker.bootstrap, settings.input_topic, rest, per_second=len(rest) / 20)
        )
        await producing
        await converge(broker.bootstrap, settings.output_topic, expected_records(raw), 180)
        for worker in (b, c):
            worker.assert_running()
    except BaseException as error:
        tails = "\n".join(f"--- {w.log_path.name}\n{w.log_tail(30)}" for w in (a, b, c))
        raise AssertionError(f"{error}\n{tails}") from error
    finally:
        if producing is not None:
            producing.cancel()
            with contextlib.suppress(BaseException):
                await producing
        for worker in (a, b, c):
            if worker.process is not None:
                worker.stop()
    if store == "rocksdb://":  # the partitions b took over came back through the bulk restore
        assert "customers: restored" in b.log_text(), b.log_tail(60)
    print(f"two workers {spread}; after the new worker joined {respread}; {timings}")
