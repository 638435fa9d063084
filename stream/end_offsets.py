"""End offsets read from the records themselves, for restoring tables from changelogs.

The embedded broker (Tansu 0.6.0) reports a partition's end offset as the base offset of
its last record batch + 1, so after a multi-record batch it reports too little (a canary
test in tests/integration/test_broker.py watches for a fix). A restore that stops at the
reported end leaves the batch's later records out: the table comes back stale, and with
RocksDB faust stops with `ConsistencyError` when the offset it persisted lies beyond.

`exact_end_offsets` fetches from the reported end - 1: the last record on Apache Kafka,
the start of the last batch on the embedded broker. The last record fetched, + 1, is the
end. On Apache Kafka that is what it reported, at the cost of one small fetch per
partition.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 10.0


async def exact_end_offsets(
    consumer: AIOKafkaConsumer,
    partitions: Iterable[TopicPartition],
    timeout: float = FETCH_TIMEOUT_S,
) -> dict[TopicPartition, int]:
    """Each partition's end offset: one past its last record, even where the broker
    reports less. `consumer` is a started consumer of no group; it is left assigned to the
    partitions read. A partition that serves nothing within `timeout` keeps the reported
    end (logged)."""
    partitions = list(partitions)
    reported = await consumer.end_offsets(partitions)
    beginnings = await consumer.beginning_offsets(partitions)
    nonempty = [tp for tp in partitions if reported[tp] > beginnings[tp]]
    ends = dict(reported)
    if not nonempty:
        return ends
    consumer.assign(nonempty)
    for tp in nonempty:
        consumer.seek(tp, reported[tp] - 1)
    waiting = set(nonempty)
    deadline = asyncio.get_running_loop().time() + timeout
    while waiting:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            log.warning(
                "no record at the reported end of %s within %.0fs; keeping the reported ends",
                sorted(f"{tp.topic}[{tp.partition}]" for tp in waiting),
                timeout,
            )
            break
        fetched = await consumer.getmany(*waiting, timeout_ms=int(min(remaining, 1.0) * 1000))
        for tp, records in fetched.items():
            if records:
                ends[tp] = max(ends[tp], records[-1].offset + 1)
                waiting.discard(tp)
    return ends
