"""faust's buffer of table writes has the stages' bound on unacknowledged writes, not its
hard-coded 100 (past which it logged "producer buffer full" at every large flush)."""

from __future__ import annotations

from stream.app import MAX_UNACKNOWLEDGED_WRITES, create_app
from stream.settings import Settings


def test_the_worker_bounds_fausts_write_buffer_like_its_own_backpressure(tmp_path):
    worker = create_app(Settings(data_dir=tmp_path / "data"))
    assert worker.app.producer.buffer.max_messages == MAX_UNACKNOWLEDGED_WRITES == 2000
