"""`churn-stream worker`: run the stream processor in this process."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable

from stream.cli import add_settings_flags, settings_from
from stream.settings import Settings


def run_worker(settings: Settings) -> int:
    """Run a faust worker until it is stopped; the exit code is non-zero after a crash."""
    import faust

    from stream.app import create_app

    asyncio.set_event_loop(asyncio.new_event_loop())
    worker = create_app(settings)
    faust_worker = faust.Worker(
        worker.app,
        loglevel=settings.log_level.upper(),
        redirect_stdouts=False,
    )
    try:
        faust_worker.execute_from_commandline()
    except SystemExit as done:
        crashed = worker.app.crash_reason is not None or faust_worker.crash_reason is not None
        code = done.code if isinstance(done.code, int) else 1
        return 1 if crashed and code == 0 else code
    return 0


def configure(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    add_settings_flags(parser)

    def handle(args: argparse.Namespace) -> int:
        settings = settings_from(args)
        logging.basicConfig(level=settings.log_level.upper())
        return run_worker(settings)

    return handle
