"""The worker keeps the root logger at the configured level (stream/faust_worker.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import faust
import pytest

from stream.app import create_app
from stream.faust_worker import SpinnerlessWorker
from stream.settings import Settings


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
    SpinnerlessWorker(app, loglevel="WARNING", redirect_stdouts=False)._setup_logging()
    assert root_logger.level == logging.WARNING
    assert not root_logger.isEnabledFor(logging.DEBUG)
    # What faust 0.15.3's own worker does (if this changes, stream/faust_worker.py may go).
    faust.Worker(app, loglevel="WARNING", redirect_stdouts=False)._setup_logging()
    assert root_logger.level == logging.DEBUG
