"""How the ingest stage cuts the input into batches (`Ingest._read_batch`), on the broker:
once input arrives it keeps reading for `CHURN_BATCH_LINGER_MS` to fill the batch, and a
batch never holds more than `CHURN_BATCH_MAX_RECORDS`. Once it has read to the end of its
partitions it stops fetching for the rest of the linger and fetches what gathered at once.
And how it forwards a batch (`Ingest._process`): messages of at most
`MAX_EVENTS_PER_CUSTOMER_MESSAGE` events on the customer-batch topic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from stream.broker import create_topics, standard_topics
from stream.customers import partition_for
from stream.ingest import IDLE_POLL_MS, Ingest
from stream.kafka_config import FETCH_MAX_WAIT_MS
from stream.observability import Metrics
from stream.routing import MAX_EVENTS_PER_CUSTOMER_MESSAGE, decode_customer_batch
from tests.builders import event, iso
from tests.integration.kafka_io import (
    produce,
    produce_paced,
    read_all,
    reliability_settings,
    simulated,
)

FETCH_API_KEY = 1  # the Kafka protocol's Fetch request


def _count(batches: dict[Any, list[Any]]) -> int:
    return sum(len(messages) for messages in batches.values())


async def started_ingest(
    broker: Any, topic_prefix: str, tmp_path: Any, max_records: int, linger_ms: int
) -> tuple[Ingest, Any]:
    """An ingest stage with its clients started (not its loop), and its real consumer."""
    settings = reliability_settings(
        topic_prefix,
        broker.url,
        tmp_path,
        batch_max_records=max_records,
        batch_linger_ms=linger_ms,
    )
    await create_topics(broker.bootstrap, standard_topics(settings))
    ingest = Ingest(settings, Metrics.create(CollectorRegistry()))
    await ingest._start_clients()
    return ingest, ingest._consumer


def observe_reads(consumer: Any) -> tuple[asyncio.Event, list[int]]:
    """Watch the real consumer's reads: an event set at the first records, and the number
    of records of every read from then on."""
    first_read = asyncio.Event()
    counts: list[int] = []
    read = consumer.getmany

    async def reading(*args: Any, **kwargs: Any) -> Any:
        batches = await read(*args, **kwargs)
        if batches:
            first_read.set()
        if first_read.is_set():
            counts.append(_count(batches))
        return batches

    consumer.getmany = reading
    return first_read, counts


async def first_batch(
    ingest: Ingest,
    broker: Any,
    head: list[bytes],
    first_read: asyncio.Event,
    then: Coroutine[Any, Any, Any],
) -> dict[Any, list[Any]]:
    """Produce `head` and, once the stage has read some of it, run `then`; returns the
    stage's first batch (the group join comes first)."""
    await produce(broker.bootstrap, ingest._settings.input_topic, head)

    async def following() -> None:
        await first_read.wait()
        await then

    follower = asyncio.ensure_future(following())
    batch: dict[Any, list[Any]] = {}
    while not batch:
        batch = await asyncio.wait_for(ingest._read_batch(), 60)
    await follower
    return batch


async def test_a_batch_lingers_for_input_that_follows_but_never_exceeds_its_limit(
    broker, topic_prefix, tmp_path
):
    ingest, consumer = await started_ingest(broker, topic_prefix, tmp_path, 25, 5000)
    settings = ingest._settings
    raw = simulated(customers=20, days=30, seed=3)[:40]
    first_read, _ = observe_reads(consumer)
    try:
        batch = await first_batch(
            ingest,
            broker,
            raw[:10],
            first_read,
            produce(broker.bootstrap, settings.input_topic, raw[10:]),
        )
        rest: dict[Any, list[Any]] = {}
        while _count(rest) < len(raw) - 25:
            more = await asyncio.wait_for(ingest._read_batch(), 60)
            assert _count(more) <= 25
            for tp, messages in more.items():
                rest.setdefault(tp, []).extend(messages)
    finally:
        await ingest.stop()
    assert _count(batch) == 25, "topped up by what followed, up to the limit"
    values = [m.value for messages in (*batch.values(), *rest.values()) for m in messages]
    assert sorted(values) == sorted(raw)  # nothing lost or repeated across the two batches


async def test_records_that_queued_while_a_batch_was_processed_do_not_linger_again(
    broker, topic_prefix, tmp_path
):
    """The linger counts from when the previous batch was taken: records that arrived
    while it was processed have waited that long already."""
    ingest, consumer = await started_ingest(broker, topic_prefix, tmp_path, 1000, 2000)
    settings = ingest._settings
    raw = simulated(customers=20, days=30, seed=4)[:20]
    assert consumer._fetch_max_wait_ms == FETCH_MAX_WAIT_MS
    polls: list[int] = []
    first_records_at: list[float] = []
    read = consumer.getmany

    async def counting(*args: Any, **kwargs: Any) -> Any:
        polls.append(kwargs["timeout_ms"])
        batches = await read(*args, **kwargs)
        if batches and not first_records_at:
            first_records_at.append(time.monotonic())
        return batches

    consumer.getmany = counting
    try:
        await produce(broker.bootstrap, settings.input_topic, raw[:10])
        first: dict[Any, list[Any]] = {}
        while not first:  # the group join comes first
            first = await asyncio.wait_for(ingest._read_batch(), 60)
        lingered = time.monotonic() - first_records_at[0]
        assert lingered >= settings.batch_linger_ms / 1000 - 0.01, "the first batch lingered"
        # "processing" the first batch for longer than the linger; more input queues
        await produce(broker.bootstrap, settings.input_topic, raw[10:])
        await asyncio.sleep(2.5)
        polls.clear()
        second = await asyncio.wait_for(ingest._read_batch(), 60)
    finally:
        await ingest.stop()
    assert _count(first) == 10
    assert _count(second) == 10
    assert polls == [IDLE_POLL_MS], "one poll: the queued records had waited out the linger"


def count_fetches(consumer: Any, after: asyncio.Event) -> list[float]:
    """Watch the fetch requests the real consumer sends to the broker once `after` is set:
    their send times."""
    sent: list[float] = []
    client = consumer._client
    send = client.send

    async def sending(node_id: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if request.API_KEY == FETCH_API_KEY and after.is_set():
            sent.append(time.monotonic())
        return await send(node_id, request, *args, **kwargs)

    client.send = sending
    return sent


async def assigned(consumer: Any) -> None:
    while not consumer.assignment():
        await asyncio.sleep(0.05)


async def test_a_batch_read_to_the_end_pauses_fetching_then_fetches_once(
    broker, topic_prefix, tmp_path
):
    """Reading through the linger fetched every few milliseconds while records trickled
    in, and each fetch costs the broker a lookup in the partition. Read to the end of its
    partitions, the stage now fetches nothing for the rest of the linger and takes what
    gathered in one fetch, so the batch still holds everything that arrived meanwhile."""
    ingest, consumer = await started_ingest(broker, topic_prefix, tmp_path, 1000, 3000)
    settings = ingest._settings
    raw = simulated(customers=20, days=30, seed=5)[:15]
    first_read, reads = observe_reads(consumer)
    fetches = count_fetches(consumer, first_read)
    try:
        one_every_100_ms = produce_paced(
            broker.bootstrap, settings.input_topic, raw[5:], 10, chunk=1
        )
        batch = await first_batch(ingest, broker, raw[:5], first_read, one_every_100_ms)
    finally:
        await ingest.stop()
    values = [m.value for messages in batch.values() for m in messages]
    assert sorted(values) == sorted(raw), "everything that arrived during the linger"
    assert len(reads) == 2, reads  # the read that found the first five, the one after
    assert len(fetches) == 1, "after the first five, one fetch at the end of the linger"


async def test_a_steady_stream_costs_one_fetch_per_batch(broker, topic_prefix, tmp_path):
    """A live stream read to its end: between batches the stage fetches only once, when
    the next batch's linger is over, however often records arrive."""
    ingest, consumer = await started_ingest(broker, topic_prefix, tmp_path, 10_000, 500)
    settings = ingest._settings
    raw = simulated(customers=50, days=30, seed=6)[:300]
    first_read, _ = observe_reads(consumer)
    fetches = count_fetches(consumer, first_read)
    read: list[bytes] = []
    batch_count = 0
    await asyncio.wait_for(assigned(consumer), 60)  # the stream starts after the group join
    every_10_ms = asyncio.ensure_future(
        produce_paced(broker.bootstrap, settings.input_topic, raw, 100, chunk=1)
    )
    try:
        while len(read) < len(raw):
            batch = await asyncio.wait_for(ingest._read_batch(), 60)
            if not batch:
                continue
            batch_count += 1
            read.extend(m.value for messages in batch.values() for m in messages)
            await asyncio.sleep(0.05)  # processing the batch
        await every_10_ms
    finally:
        await ingest.stop()
    assert sorted(read) == sorted(raw), "nothing lost or read twice"
    assert batch_count >= 3, batch_count
    # Without the pause: about three fetches per batch on this broker, more on one that
    # answers each fetch as soon as a record arrives.
    assert len(fetches) <= batch_count + 1, (len(fetches), batch_count)


async def test_a_batch_of_one_partition_goes_out_in_messages_of_the_most_events_allowed(
    broker, topic_prefix, tmp_path
):
    """One customer's 12,000 events, read in one batch, reach the customer-batch topic as
    messages of at most MAX_EVENTS_PER_CUSTOMER_MESSAGE events, in order, each once; every
    other internal partition gets an empty message (the watermarks)."""
    count = 2 * MAX_EVENTS_PER_CUSTOMER_MESSAGE + 2000
    ingest, consumer = await started_ingest(broker, topic_prefix, tmp_path, 20_000, 2_000)
    settings = ingest._settings
    raw = [event("c1", "activity", iso(2026, 3, 1, 12), event_id=f"a{i}") for i in range(count)]
    try:
        await asyncio.wait_for(assigned(consumer), 60)
        await produce(broker.bootstrap, settings.input_topic, raw)
        read = 0
        while read < count:
            batch = await asyncio.wait_for(ingest._read_batch(), 60)
            read += _count(batch)
            if batch:
                await ingest._process(batch)
    finally:
        await ingest.stop()
    messages = await read_all(broker.bootstrap, settings.customer_topic)
    owner = partition_for("c1", settings.partitions)
    sizes_by_partition: dict[int, list[int]] = {}
    event_ids: list[str] = []
    for message in sorted(messages, key=lambda m: (m.partition, m.offset)):
        _, events = decode_customer_batch(message.value)
        sizes_by_partition.setdefault(message.partition, []).append(len(events))
        event_ids.extend(e.event_id for e in events)
    assert event_ids == [f"a{i}" for i in range(count)], "each event once, in order"
    sizes = sizes_by_partition[owner]
    assert max(sizes) == MAX_EVENTS_PER_CUSTOMER_MESSAGE, sizes
    assert sum(sizes) == count
    others = {p: s for p, s in sizes_by_partition.items() if p != owner}
    assert len(others) == settings.partitions - 1 and all(set(s) == {0} for s in others.values())


@pytest.mark.parametrize("partitions", [1, 4])
async def test_the_backlog_is_what_is_left_to_read_when_a_batch_is_forwarded(
    broker, topic_prefix, tmp_path, partitions
):
    """`Ingest.backlog()` (what the customer stage reads to let a backlog queue up): the
    records of the assigned partitions not read yet, already up to date while a batch is
    forwarded, since its messages wake the customer stage; 0 before the first batch. With
    several partitions, also those not read from yet count (the consumer drains one
    partition's records before the next one's)."""
    count, max_records = 5_000, 1_000
    settings = reliability_settings(
        topic_prefix,
        broker.url,
        tmp_path,
        partitions=partitions,
        alert_topic=f"{topic_prefix}alerts",  # the shared default one has 4 partitions
        batch_max_records=max_records,
        batch_linger_ms=0,
    )
    await create_topics(broker.bootstrap, standard_topics(settings))
    raw = [
        event(f"c{i % 50}", "activity", iso(2026, 3, 1, 12), event_id=f"a{i}") for i in range(count)
    ]
    # All of it before the consumer starts: its first fetch reports the end.
    await produce(broker.bootstrap, settings.input_topic, raw)
    ingest = Ingest(settings, Metrics.create(CollectorRegistry()))
    await ingest._start_clients()
    at_forward: list[int] = []
    forward = ingest._forward

    async def recording_forward(routed: Any) -> Any:
        at_forward.append(ingest.backlog())
        return await forward(routed)

    ingest._forward = recording_forward  # type: ignore[method-assign]
    read: list[int] = []
    try:
        assert ingest.backlog() == 0  # nothing read yet
        while sum(read) < count:
            batch = await asyncio.wait_for(ingest._read_batch(), 60)
            if batch:
                read.append(_count(batch))
                await ingest._process(batch)
        assert ingest.backlog() == 0
    finally:
        await ingest.stop()
    assert max(read) <= max_records and len(read) >= count // max_records
    left = [count - sum(read[: i + 1]) for i in range(len(read))]
    assert at_forward == left, (at_forward, read)
