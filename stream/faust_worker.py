"""faust's worker without its terminal spinner, and with a bound on how long it stops.

At a log level of WARNING or above, faust-streaming 0.15.3's worker adds its spinner's log
handler and sets the root logger to DEBUG (`Worker._setup_spinner_handler`), so every
debug call of faust and aiokafka builds a log record that the handlers then drop: ~16 %
of a faust worker's CPU on a backlog (the project brief's measurement) and, by py-spy, ~20 %
of ours while it restored tables from their changelogs (before that our ingest task
reset the level). Without the spinner the root logger keeps the configured level.

Stopping, whether on a signal or after a crash, arms a `StopDeadline` (stream/stop_deadline.py).
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from stream.stop_deadline import StopDeadline


class SpinnerlessWorker(faust.Worker):  # type: ignore[misc]
    def __init__(self, *args: Any, stop_deadline: StopDeadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_deadline = stop_deadline

    async def stop(self) -> None:
        self.stop_deadline.arm()
        await super().stop()

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        super().on_setup_root_logger(logger, level)
