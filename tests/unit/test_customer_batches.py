"""The customer stage applies the queued messages of a partition as one batch
(stream/app.py): grouping them, reading back what the consumer skipped, and finding the
messages of a recorded batch to redo after a restart. The broker is replaced by a fake
refetcher here; tests/integration/test_crash.py runs the same paths against the real one."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import stream.app
from stream.app import (
    Worker,
    _apply_taken,
    _customer_runs,
    _on_customer_batches,
    _recorded_messages,
    _with_skipped,
    bounded_runs,
    by_partition,
    create_app,
    fresh_in_offset_order,
)
from stream.events import EventType, LifecycleEvent
from stream.routing import decode_customer_batch, encode_customer_batch
from stream.settings import Settings

PARTITION = 3


def message(offset: int, partition: int = PARTITION) -> SimpleNamespace:
    return SimpleNamespace(offset=offset, partition=partition, value=f"m{offset}".encode())


class FakeRefetcher:
    """The customer topic's partition as the broker holds it: offsets `kept` only."""

    def __init__(self, kept: range | list[int]) -> None:
        self.kept = list(kept)
        self.reads: list[tuple[int, int]] = []

    async def read(self, topic: str, partition: int, start: int, end: int) -> list[SimpleNamespace]:
        assert partition == PARTITION
        self.reads.append((start, end))
        return [message(offset) for offset in self.kept if start <= offset < end]


@pytest.fixture
def worker(tmp_path: Path) -> Worker:
    return create_app(Settings(data_dir=tmp_path / "data"))


def with_refetcher(worker: Worker, refetcher: FakeRefetcher) -> Worker:
    worker.refetcher = refetcher  # type: ignore[assignment]
    return worker


def test_messages_are_grouped_by_partition_in_arrival_order():
    arrived = [message(5, 1), message(9, 2), message(6, 1), message(10, 2), message(7, 1)]
    groups = by_partition(arrived)
    assert [[(m.partition, m.offset) for m in group] for group in groups] == [
        [(1, 5), (1, 6), (1, 7)],
        [(2, 9), (2, 10)],
    ]


def cut(sizes: list[int], customers: list[str], max_bytes: int, max_customers: int):
    """Run `bounded_runs` over items (index, size, customers): the runs' indexes."""
    items = list(zip(range(len(sizes)), sizes, customers, strict=True))
    runs = bounded_runs(
        items,
        size=lambda item: item[1],
        customers=lambda item: set(item[2]),
        max_bytes=max_bytes,
        max_customers=max_customers,
    )
    return [[item[0] for item in run] for run in runs]


@pytest.mark.parametrize(
    ("sizes", "max_bytes", "runs"),
    [
        ([3, 3, 3], 9, [[0, 1, 2]]),
        ([3, 3, 3], 8, [[0, 1], [2]]),
        ([3, 3, 3], 3, [[0], [1], [2]]),
        ([10, 1, 1], 5, [[0], [1, 2]]),  # a message over the bound goes alone
        ([1, 10, 1], 5, [[0], [1], [2]]),
        ([0, 0], 1, [[0, 1]]),  # watermark-only messages are tiny, never empty
    ],
)
def test_runs_are_bounded_in_bytes(sizes, max_bytes, runs):
    assert cut(sizes, ["" for _ in sizes], max_bytes, max_customers=100) == runs


@pytest.mark.parametrize(
    ("customers", "max_customers", "runs"),
    [
        (["ab", "cd", "ef"], 6, [[0, 1, 2]]),
        (["ab", "cd", "ef"], 5, [[0, 1], [2]]),
        # customers seen earlier in the run do not count again
        (["ab", "ba", "ab", "abc"], 3, [[0, 1, 2, 3]]),
        (["ab", "bc", "cd", "de"], 3, [[0, 1], [2, 3]]),
        # a message with more customers than the bound goes alone
        (["abcd", "a", "bcdef", "e"], 3, [[0], [1], [2], [3]]),
        (["", "", "a"], 1, [[0, 1, 2]]),  # watermark-only messages have no customers
    ],
)
def test_runs_are_bounded_in_distinct_customers(customers, max_customers, runs):
    assert (
        cut([1 for _ in customers], customers, max_bytes=100, max_customers=max_customers) == runs
    )


def test_runs_look_at_an_item_only_once_the_run_before_it_is_taken():
    looked: list[int] = []

    def items():
        for index in range(4):
            looked.append(index)
            yield index

    runs = bounded_runs(items(), lambda _: 1, lambda _: set(), max_bytes=2, max_customers=10)
    assert next(runs) == [0, 1]
    assert looked == [0, 1, 2]  # the item that did not fit, and no further
    assert list(runs) == [[2, 3]]


@pytest.mark.parametrize(
    ("first", "in_hand", "kept", "expected", "reads"),
    [
        # all in hand: nothing is read
        (10, [10, 11, 12], range(0, 20), [10, 11, 12], []),
        # records written before batching name one offset
        (12, [12], range(0, 20), [12], []),
        # the first messages were consumed before the restart: read back
        (10, [12], range(0, 20), [10, 11, 12], [(10, 13)]),
        # none in hand (the restart resumed past them)
        (10, [], range(0, 20), [10, 11, 12], [(10, 13)]),
        # retention removed the oldest: what is left, in order
        (10, [], range(11, 20), [11, 12], [(10, 13)]),
        # messages in hand outside the recorded range are not part of it
        (10, [9, 13, 14], range(0, 20), [10, 11, 12], [(10, 13)]),
    ],
)
async def test_a_recorded_batch_is_found_in_hand_or_read_back(
    worker, first, in_hand, kept, expected, reads
):
    refetcher = FakeRefetcher(kept)
    found = await _recorded_messages(
        with_refetcher(worker, refetcher),
        PARTITION,
        first,
        12,
        {offset: f"m{offset}".encode() for offset in in_hand},
    )
    assert found == [f"m{offset}".encode() for offset in expected]
    assert refetcher.reads == reads


@pytest.mark.parametrize(
    ("start", "in_hand", "expected_offsets", "skipped"),
    [
        (20, [22, 23], [20, 21, 22, 23], 2),  # skipped before the first in hand
        (20, [20, 23], [20, 21, 22, 23], 2),  # skipped between messages in hand
        (20, [21, 24], [20, 21, 22, 23, 24], 3),  # both
    ],
)
async def test_skipped_messages_are_read_back_and_applied_in_order(
    worker, start, in_hand, expected_offsets, skipped
):
    refetcher = FakeRefetcher(range(0, 100))
    batch = [(offset, b"in hand") for offset in in_hand]
    merged = await _with_skipped(with_refetcher(worker, refetcher), PARTITION, start, batch)
    assert [offset for offset, _ in merged] == expected_offsets
    assert all(value == b"in hand" for offset, value in merged if offset in in_hand)
    assert refetcher.reads == [(start, in_hand[-1] + 1)]
    refetched = worker.metrics.registry.get_sample_value(
        "churn_refetched_messages_total", {"stage": "customers"}
    )
    assert refetched == skipped


def customer_batch(offset: int, customers: list[str]) -> SimpleNamespace:
    events = [
        LifecycleEvent(customer, f"{customer}-{offset}", EventType.ACTIVITY, offset, None, None, ())
        for customer in customers
    ]
    value = encode_customer_batch({0: offset}, events)
    return SimpleNamespace(offset=offset, partition=PARTITION, value=value)


def test_customer_runs_decode_each_message_once_and_bound_its_distinct_customers():
    arrived = [
        customer_batch(0, ["a", "b"]),
        customer_batch(1, ["b", "a", "c"]),  # a and b again: 3 distinct so far
        customer_batch(2, ["d"]),  # a fourth: over the bound
        customer_batch(3, ["d", "e"]),
    ]
    settings = Settings(customer_batch_max_customers=3, customer_batch_max_bytes=10**6)
    runs = list(_customer_runs(arrived, settings))
    assert [[message.offset for message, _ in run] for run in runs] == [[0, 1], [2, 3]]
    for run in runs:
        for message, payload in run:
            assert payload == decode_customer_batch(message.value)


async def test_runs_taken_before_a_rebalance_are_dropped_even_after_it_began(worker, monkeypatch):
    """A take holds messages across a rebalance, and one that happens while an earlier run
    of the take is applied drops the later runs too."""
    worker.app.consumer_generation_id = 7
    arrived = [customer_batch(offset, [f"c{offset}"]) for offset in range(4)]
    for message in arrived:
        message.generation_id = 7
    arrived[0].generation_id = 6  # taken before an earlier rebalance
    monkeypatch.setattr(worker.settings, "customer_batch_max_customers", 1)
    applied: list[list[int]] = []

    async def record(worker, run, delta_topic):
        applied.append([message.offset for message, _ in run])
        worker.app.consumer_generation_id = 8  # a rebalance while this run is applied

    monkeypatch.setattr(stream.app, "_on_customer_batches", record)
    await _apply_taken(worker, arrived, delta_topic=None)
    assert applied == [[1]]


async def test_a_message_that_cannot_be_decoded_fails_the_take(worker):
    """Decoding happens inside `_apply_taken`, which the agent runs guarded: the failure
    stops the worker instead of faust skipping the message."""
    worker.app.consumer_generation_id = 1
    broken = SimpleNamespace(offset=0, partition=PARTITION, value=None, topic="t", generation_id=1)
    with pytest.raises(ValueError, match="has no value"):
        await _apply_taken(worker, [broken], delta_topic=None)


class CustomerBatchRefetcher(FakeRefetcher):
    """A partition of customer-batch messages, each of one customer's event."""

    async def read(self, topic: str, partition: int, start: int, end: int) -> list[SimpleNamespace]:
        await super().read(topic, partition, start, end)
        return [
            customer_batch(offset, [f"c{offset}"]) for offset in self.kept if start <= offset < end
        ]


@pytest.mark.parametrize(
    "arrived",
    [
        [18, 19, 20, 21],
        [21, 18, 19, 20],
        [18, 21, 18],  # 19 and 20 skipped, 18 handed over twice and last
        [18, 20, 21, 18, 20],
        [16, 17, 21, 18],  # below the recorded position: redelivered
    ],
)
async def test_every_offset_after_the_position_is_applied_once_in_order(
    worker, monkeypatch, arrived
):
    """After a takeover (a failover in CI on 12-05) faust handed over a partition's messages
    out of order in one take, the last one's offset below others. The read-back of skipped
    messages took the last message's offset as the end of its range, so the skipped ones
    after it were never applied (the worker logged `skipped 0 of ... offsets 18..18`)."""
    with_refetcher(worker, CustomerBatchRefetcher(range(0, 40)))
    recorded = {"f": 17, "o": 17, "d": []}  # the batch 17..17 is the last applied...
    worker.customers_table.stage(PARTITION, stream.app._wal_key(PARTITION), orjson.dumps(recorded))
    worker.confirmed["customers"][PARTITION] = 17  # ...and finished
    applied: list[list[int]] = []

    async def record(worker, partition, batch, payloads, delta_topic):
        assert payloads == [
            decode_customer_batch(customer_batch(offset, [f"c{offset}"]).value)
            for offset, _ in batch
        ]
        applied.append([offset for offset, _ in batch])

    monkeypatch.setattr(stream.app, "_apply_customer_batch", record)
    taken = [customer_batch(offset, [f"c{offset}"]) for offset in arrived]
    for message in taken:
        message.timestamp = 0.0
    run = [(message, decode_customer_batch(message.value)) for message in taken]
    await _on_customer_batches(worker, run, delta_topic=None)
    assert applied == [list(range(18, max(arrived) + 1))]
    fresh = {offset for offset in arrived if offset > 17}
    assert customer_count(worker, "churn_redelivered_messages_total") == len(arrived) - len(fresh)
    assert customer_count(worker, "churn_refetched_messages_total") == len(set(applied[0]) - fresh)


def customer_count(worker: Worker, counter: str) -> float:
    """A customer-stage counter (a label never incremented has no sample yet: 0)."""
    value = worker.metrics.registry.get_sample_value(counter, {"stage": "customers"})
    return 0.0 if value is None else value


@given(
    offsets=st.lists(st.integers(min_value=0, max_value=30), max_size=20),
    done=st.none() | st.integers(min_value=0, max_value=30),
)
def test_fresh_messages_are_each_offset_after_the_position_once_in_order(offsets, done):
    fresh = [message.offset for message in fresh_in_offset_order(list(map(message, offsets)), done)]
    assert fresh == sorted({offset for offset in offsets if done is None or offset > done})
