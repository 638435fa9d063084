"""A segment partition that applied a change before its flush was due gets a tick when it
is due (stream/app.py `_tick_when_due`), so what it applied is emitted an emit interval
after the last flush, not whenever the next message happens to come."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from stream.app import Worker, _cancel_due_ticks, _forget_unflushed, _maybe_flush, create_app
from stream.settings import Settings

INTERVAL_S = 0.2


def just_flushed(tmp_path: Path, *partitions: int) -> tuple[Worker, list[int]]:
    """A worker whose partitions flushed a moment ago, and the ticks it sends."""
    worker = create_app(Settings(data_dir=tmp_path / "data", emit_interval_seconds=INTERVAL_S))
    sent: list[int] = []

    async def send_tick(partition: int) -> None:
        sent.append(partition)

    worker.send_tick = send_tick
    for partition in partitions:
        worker.last_flush[partition] = time.monotonic()
    return worker, sent


async def not_due(worker: Worker, partition: int, changed: bool) -> None:
    await _maybe_flush(worker, partition, (None, None), worker.rebalances, changed=changed)


async def test_a_change_before_the_flush_is_due_gets_one_tick_when_it_is(tmp_path):
    worker, sent = just_flushed(tmp_path, 0, 1)
    await not_due(worker, 0, changed=True)
    scheduled = worker.due_ticks[0]
    await not_due(worker, 0, changed=True)
    assert worker.due_ticks[0] is scheduled, "one tick however many changes"
    await not_due(worker, 1, changed=False)
    assert 1 not in worker.due_ticks, "a tick itself schedules nothing (idle stays idle)"
    assert sent == []
    await asyncio.sleep(INTERVAL_S * 2)
    assert sent == [0]
    assert worker.due_ticks == {}


async def test_a_stopping_worker_cancels_its_due_ticks(tmp_path):
    worker, sent = just_flushed(tmp_path, 0, 2)
    await not_due(worker, 0, changed=True)
    await not_due(worker, 2, changed=True)
    _cancel_due_ticks(worker)
    await asyncio.sleep(INTERVAL_S * 2)
    assert sent == []
    assert worker.due_ticks == {}


async def test_a_rebalance_cancels_due_ticks_so_a_reassigned_partition_schedules_afresh(
    tmp_path,
):
    worker, sent = just_flushed(tmp_path, 0)
    await not_due(worker, 0, changed=True)
    stale = worker.due_ticks[0]
    _forget_unflushed(worker)
    assert worker.due_ticks == {}
    worker.last_flush[0] = time.monotonic()
    await not_due(worker, 0, changed=True)
    assert worker.due_ticks[0] is not stale
    await asyncio.sleep(INTERVAL_S * 2)
    assert sent == [0], "only the tick scheduled after the rebalance is sent"


async def test_a_tick_that_cannot_be_sent_is_reported_and_the_next_change_schedules_again(
    tmp_path, caplog: pytest.LogCaptureFixture
):
    worker, _ = just_flushed(tmp_path, 0)

    async def broken(partition: int) -> None:
        raise ConnectionError("broker gone")

    worker.send_tick = broken
    with caplog.at_level(logging.WARNING, logger="stream.app"):
        await not_due(worker, 0, changed=True)
        await asyncio.sleep(INTERVAL_S * 2)
    assert "a tick for a due flush was not sent" in caplog.text
    assert "broker gone" in caplog.text
    worker.last_flush[0] = time.monotonic()
    await not_due(worker, 0, changed=True)
    assert 0 in worker.due_ticks
    _cancel_due_ticks(worker)
