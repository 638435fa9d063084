"""The worker keeps the root logger at the configured level and bounds its stop
(stream/faust_worker.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import faust
import pytest

from stream.app import create_app
from stream.faust_worker import SpinnerlessWorker
from stream.settings import Settings
from stream.stop_deadline import StopDeadline


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield root
    root.setLevel(level)
    root.handlers[:] = handlers


async def test_the_root_logger_keeps_the_configured_level(
    tmp_path: Path, root_logger: logging.Logger
) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data")).app
    worker = SpinnerlessWorker(
        app, loglevel="WARNING", redirect_stdouts=False, stop_deadline=StopDeadline(60, 1)
    )
    worker._setup_logging()
    assert root_logger.level == logging.WARNING
    assert not root_logger.isEnabledFor(logging.DEBUG)
    # What faust 0.15.3's own worker does (if this changes, stream/faust_worker.py may go).
    faust.Worker(app, loglevel="WARNING", redirect_stdouts=False)._setup_logging()
    assert root_logger.level == logging.DEBUG


async def test_stopping_arms_the_stop_deadline(tmp_path: Path) -> None:
    exits: list[int] = []
    deadline = StopDeadline(3600, exit_code=1, exit=exits.append)
    app = create_app(Settings(data_dir=tmp_path / "data")).app
    worker = SpinnerlessWorker(app, redirect_stdouts=False, stop_deadline=deadline)
    assert not deadline.armed
    try:
        await worker.stop()
        assert deadline.armed
    finally:
        deadline.cancel()
    assert exits == []
