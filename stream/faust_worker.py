"""faust's worker without its terminal spinner.

At a log level of WARNING or above, faust-streaming 0.15.3's worker adds its spinner's log
handler and sets the root logger to DEBUG (`Worker._setup_spinner_handler`), so every
debug call of faust and aiokafka builds a log record that the handlers then drop:
measured here ~16 % of the worker's CPU on a backlog and ~20 % while it restores tables
from their changelogs. Without the spinner the root logger keeps the configured level.
"""

from __future__ import annotations

import logging

import faust


class SpinnerlessWorker(faust.Worker):  # type: ignore[misc]
    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        super().on_setup_root_logger(logger, level)
