"""Resuming the segment stage after a crash that cut a flush off: its entries are written
between a note of the position they reach and that position, and a partition whose note
is ahead of its position emits nothing until the messages up to the note are applied again
(emitting from entries partly ahead of the position gave wrong, even negative, counts)."""

from __future__ import annotations

import asyncio
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
    await _maybe_flush(worker, 0, (None, None), worker.rebalances, changed=True)
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


def worker_with_a_window(tmp_path: Path) -> tuple[Worker, int]:
    """A worker whose aggregator has one window of `all` to emit; and its partition."""
    from stream.app import _owner
    from stream.formulas import WIDTH

    worker = restored(tmp_path, None, None)
    owner = _owner(worker, "all")
    for store in worker.aggregate_stores:
        store.select(owner)
    counts = (1,) + (0,) * (WIDTH - 1)
    worker.aggregator.apply("all", 0, 0, {0: 1_767_225_600_000}, {("day", 20454, "all"): counts})
    return worker, owner


async def test_a_flush_s_notes_are_acknowledged_before_its_records_are_sent(tmp_path, monkeypatch):
    import stream.app

    worker, owner = worker_with_a_window(tmp_path)
    steps: list[str] = []

    async def acknowledged() -> None:
        steps.append("notes acknowledged")

    class Topic:
        async def send(self, key: bytes, value: bytes) -> asyncio.Future:
            steps.append("record sent")
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

    monkeypatch.setattr(worker.emitted_store, "commit", lambda: steps.append("notes written"))
    monkeypatch.setattr(worker.aggregate_tables[2], "acknowledged", acknowledged)
    monkeypatch.setattr(worker.spike_store, "commit", lambda: steps.append("spike state"))
    monkeypatch.setattr(stream.app, "_commit_segments", lambda *_: steps.append("position"))
    worker.confirmed["segments"][owner] = 0
    await _maybe_flush(worker, owner, (Topic(), Topic()), worker.rebalances, changed=True)
    assert steps[:3] == ["notes written", "notes acknowledged", "record sent"]
    assert steps[-2:] == ["spike state", "position"]


def test_a_rebalance_discards_every_held_write_and_is_counted(tmp_path):
    worker, _ = worker_with_a_window(tmp_path)
    list(worker.aggregator.flush())  # notes held in the emitted store
    worker.spike_store["state"] = 1
    before = worker.rebalances
    _forget_unflushed(worker)
    assert worker.rebalances == before + 1
    stores = (*worker.aggregate_stores, worker.emitted_store, worker.spike_store)
    assert all(not store._pending for store in stores)


async def test_a_handler_a_rebalance_interrupted_stops_without_writing(tmp_path):
    from stream.app import TICK, SupersededError, _apply_deltas, _guarded

    worker, owner = worker_with_a_window(tmp_path)
    began = worker.rebalances
    _forget_unflushed(worker)  # faust signals revocation while the handler awaits
    with pytest.raises(SupersededError):
        await _apply_deltas(worker, owner, 7, None, TICK, (None, None), began)
    assert worker.confirmed["segments"] == {}
    crashed: list[BaseException] = []

    async def crash(error: BaseException) -> None:
        crashed.append(error)

    worker.app.crash = crash  # type: ignore[method-assign]

    async def interrupted() -> None:
        raise SupersededError

    await _guarded(worker, "segments", interrupted())  # not a failure: no crash
    assert crashed == []
