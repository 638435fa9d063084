"""Resuming the segment stage after a crash that cut a flush off: its entries are written
between a note of the position they reach and that position, and a partition whose note
is ahead of its position emits nothing until the messages up to the note are applied again
(emitting from entries partly ahead of the position gave wrong, even negative, counts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.app import (
    Worker,
    _flush_held,
    _forget_unflushed,
    _maybe_flush,
    _resume_segments,
    create_app,
    flushing_key,
    position_key,
)
from stream.settings import Settings


def restored(tmp_path: Path, position: int | None, flushing: int | None) -> Worker:
    """A worker whose entries table was restored with this position and note."""
    worker = create_app(Settings(data_dir=tmp_path / "data"))
    entries = worker.aggregate_tables[0]
    if position is not None:
        entries.data[position_key(0)] = position
    if flushing is not None:
        entries.data[flushing_key(0)] = flushing
    return worker


@pytest.mark.parametrize(
    ("position", "flushing", "resumes_after", "held_until"),
    [
        (None, None, None, None),  # never flushed
        (6, 6, 6, None),  # the last flush completed
        (6, 16, 6, 16),  # cut off after its note: entries may include offsets 7..16
        (None, 3, None, 3),  # the first flush cut off
    ],
)
def test_a_partition_resumes_from_its_position_and_is_held_after_a_cut_off_flush(
    tmp_path, position, flushing, resumes_after, held_until
):
    worker = restored(tmp_path, position, flushing)
    assert _resume_segments(worker, 0) == resumes_after
    assert worker.flush_held_until.get(0) == held_until


def test_the_hold_ends_once_the_messages_through_the_note_are_applied_again(tmp_path):
    worker = restored(tmp_path, 6, 16)
    _resume_segments(worker, 0)
    for applied, held in [(7, True), (15, True), (16, False), (17, False)]:
        worker.confirmed["segments"][0] = applied
        assert _flush_held(worker, 0) is held, applied
    assert worker.flush_held_until == {}


async def test_a_held_partition_flushes_nothing_and_keeps_its_writes(tmp_path):
    worker = restored(tmp_path, 6, 16)
    _resume_segments(worker, 0)
    entries_store, _ = worker.aggregate_stores
    entries_store.select(0)
    entries_store["entry"] = 1
    worker.confirmed["segments"][0] = 9
    # not held, this flush would write the tables, which faust refuses outside a stream
    await _maybe_flush(worker, 0, (None, None))
    assert entries_store.get("entry") == 1
    assert worker.aggregate_tables[0].get("entry") is None
    assert 0 not in worker.last_flush


def test_a_rebalance_forgets_the_hold_the_next_owner_finds_it_in_the_tables(tmp_path):
    worker = restored(tmp_path, 6, 16)
    _resume_segments(worker, 0)
    _forget_unflushed(worker)
    assert worker.flush_held_until == {}


def test_a_held_partition_s_dimensions_are_not_exposed_until_applied_again(tmp_path):
    from prometheus_client import generate_latest

    from stream.app import _owner
    from stream.formulas import WIDTH

    worker = restored(tmp_path, 6, 16)
    owner = _owner(worker, "all")
    worker.aggregate_tables[0].data[flushing_key(owner)] = 16
    _resume_segments(worker, owner)
    for store in worker.aggregate_stores:
        store.select(owner)
    counts = (1,) + (0,) * (WIDTH - 1)
    worker.aggregator.apply("all", 0, 0, {0: 1_767_225_600_000}, {("day", 20454, "all"): counts})

    def exposed() -> bool:
        lines = generate_latest(worker.metrics.registry).decode().splitlines()
        return any(
            line.startswith("churn_customers_end{") and 'dimension="all"' in line for line in lines
        )

    assert not exposed()
    worker.confirmed["segments"][owner] = 16
    _flush_held(worker, owner)
    assert exposed()
