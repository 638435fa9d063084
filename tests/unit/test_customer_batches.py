"""The customer stage applies the queued messages of a partition as one batch
(stream/app.py): grouping them, reading back what the consumer skipped, and finding the
messages of a recorded batch to redo after a restart. The broker is replaced by a fake
refetcher here; tests/integration/test_crash.py runs the same paths against the real one."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from stream.app import Worker, _recorded_messages, _with_skipped, by_partition, create_app
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
    groups = by_partition(arrived, max_bytes=1000)
    assert [[(m.partition, m.offset) for m in group] for group in groups] == [
        [(1, 5), (1, 6), (1, 7)],
        [(2, 9), (2, 10)],
    ]


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
def test_a_partition_is_cut_into_runs_of_bounded_size(sizes, max_bytes, runs):
    arrived = [SimpleNamespace(offset=i, partition=0, value=b"x" * n) for i, n in enumerate(sizes)]
    groups = by_partition(arrived, max_bytes)
    assert [[m.offset for m in group] for group in groups] == runs


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
