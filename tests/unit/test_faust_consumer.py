"""The worker's faust consumer fetches with a short wait and commits nothing after a crash
(stream/faust_consumer.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

from stream.app import create_app
from stream.faust_consumer import FETCH_MAX_WAIT_MS
from stream.settings import Settings


async def _fetch_wait_of(consumer_thread: object, transport: object) -> int:
    consumer = consumer_thread._create_worker_consumer(transport)  # type: ignore[attr-defined]
    try:
        return int(consumer._fetch_max_wait_ms)
    finally:
        await consumer.stop()


async def test_the_worker_consumer_waits_100_ms_where_faust_waits_1500(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data")).app
    ours = app.consumer._new_consumer_thread()
    assert await _fetch_wait_of(ours, app.transport) == FETCH_MAX_WAIT_MS == 100
    # What faust 0.15.3 hard-codes (if this changes, stream/faust_consumer.py may go).
    plain = faust_aiokafka.AIOKafkaConsumerThread(app.consumer, loop=app.loop, beacon=None)
    assert await _fetch_wait_of(plain, app.transport) == 1500


async def test_a_crashed_worker_commits_nothing(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data")).app
    consumer = app.consumer
    forced: list[Any] = []

    async def force_commit(topics: Any = None, start_new_transaction: bool = True) -> bool:
        forced.append(topics)
        return True

    consumer.force_commit = force_commit
    assert await consumer.commit() is True
    assert forced == [None]
    await app.crash(RuntimeError("a stage failed"))
    assert await consumer.commit() is False
    assert await consumer.commit_and_end_transactions() is None
    assert forced == [None]
