"""`churn-stream worker`: run the stream processor in this process.

Start-up: the worker first waits for Kafka (metadata request, retried with backoff and a
clear log line) for at most `CHURN_STARTUP_TIMEOUT_SECONDS`, then starts faust — whose
clients would otherwise give up at the first refused connection — and the ingest stage.
Exit codes: 0 after a clean stop, 1 after a crash or a stop that outlasted
`CHURN_STOP_TIMEOUT_SECONDS`, 2 when Kafka stayed unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from stream import local_state
from stream.c_heap import MMAP_THRESHOLD_BYTES, map_large_blocks
from stream.cli import add_settings_flags, settings_from
from stream.gc_schedule import collect_on_schedule
from stream.kafka_config import aiokafka_options, describe
from stream.settings import Settings
from stream.stop_deadline import StopDeadline

log = logging.getLogger("stream.worker")

EXIT_CRASHED: Final = 1
EXIT_UNREACHABLE: Final = 2
_FIRST_DELAY_S: Final = 0.5
_MAX_DELAY_S: Final = 10.0
_PROBE_TIMEOUT_MS: Final = 5000


async def _probe(settings: Settings) -> None:
    """Raise unless the cluster answers a metadata request."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(request_timeout_ms=_PROBE_TIMEOUT_MS, **aiokafka_options(settings))
    try:
        await admin.start()
        await admin.describe_cluster()
    finally:
        await admin.close()


async def wait_for_kafka(settings: Settings, clock: Callable[[], float] = time.monotonic) -> bool:
    """True once Kafka answers; False if it did not within the start-up deadline."""
    began = clock()
    deadline = began + settings.startup_timeout_seconds
    delay = _FIRST_DELAY_S
    attempt = 0
    while True:
        attempt += 1
        try:
            await _probe(settings)
        except Exception as error:
            left = deadline - clock()
            if left <= 0:
                log.error(
                    "kafka unreachable at %s for %.0fs (CHURN_STARTUP_TIMEOUT_SECONDS); "
                    "giving up: %s",
                    settings.bootstrap_servers,
                    clock() - began,
                    _reason(error),
                )
                return False
            wait = min(delay, left)
            log.warning(
                "kafka unreachable at %s (attempt %d: %s); retrying in %.1fs, giving up in %.0fs",
                settings.bootstrap_servers,
                attempt,
                _reason(error),
                wait,
                left,
            )
            await asyncio.sleep(wait)
            delay = min(delay * 2, _MAX_DELAY_S)
            continue
        if attempt > 1:
            log.info(
                "kafka reachable at %s after %.1fs", settings.bootstrap_servers, clock() - began
            )
        return True


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) < 200 else text[:200] + "..."


def run_worker(settings: Settings) -> int:
    """Run a faust worker until it is stopped; the exit code is non-zero after a crash."""
    log.info("churn-stream worker %s, app %s", describe(settings), settings.app_id)
    if not asyncio.run(wait_for_kafka(settings)):
        return EXIT_UNREACHABLE

    from stream.app import create_app
    from stream.faust_worker import SpinnerlessWorker

    asyncio.set_event_loop(asyncio.new_event_loop())
    worker = create_app(settings)
    _map_large_blocks_once_restored(worker.app)
    collect_on_schedule()  # the app's `collect_garbage` timer collects
    stop_deadline = StopDeadline(settings.stop_timeout_seconds, EXIT_CRASHED)
    faust_worker = SpinnerlessWorker(
        worker.app,
        loglevel=settings.log_level.upper(),
        redirect_stdouts=False,
        stop_deadline=stop_deadline,
    )
    local_state.prepare(settings.data_dir, Path(worker.app.conf.tabledir))
    code = 0
    try:
        faust_worker.execute_from_commandline()
    except SystemExit as done:
        crashed = worker.app.crash_reason is not None or faust_worker.crash_reason is not None
        code = done.code if isinstance(done.code, int) else EXIT_CRASHED
        code = EXIT_CRASHED if crashed and code == 0 else code
    finally:
        stop_deadline.cancel()
    _note_stop(settings, code, worker.tables_acknowledged())
    return code


def _map_large_blocks_once_restored(app: Any) -> None:
    """Fix glibc's mmap threshold (stream/c_heap.py) once the first restore is over: a
    restore ran ~13 % slower with it fixed (README, "The threshold after the first
    restore"), while the holes it prevents build up over hours of steady load."""
    done = False

    @app.on_rebalance_complete.connect
    async def map_once(sender: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal done
        if done:
            return
        done = True
        if map_large_blocks():
            log.info(
                "C heap: blocks of %d KiB or more are mapped on their own from now on",
                MMAP_THRESHOLD_BYTES // 1024,
            )
        else:
            log.info(
                "C heap: glibc's mmap threshold left as it is (no glibc, or "
                "MALLOC_MMAP_THRESHOLD_ set)"
            )


def _note_stop(settings: Settings, code: int, tables_acknowledged: bool) -> None:
    """Let the next start keep the local tables only if this stop left them consistent
    with their changelog (stream/local_state.py)."""
    if code == 0 and tables_acknowledged:
        local_state.mark_clean(settings.data_dir)
        log.info("stopped cleanly: every table write acknowledged")
        return
    log.warning(
        "stopped %s: the next start restores the local tables from their changelog",
        "with table writes not acknowledged" if code == 0 else f"with exit code {code}",
    )


def configure(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    add_settings_flags(parser)

    def handle(args: argparse.Namespace) -> int:
        settings = settings_from(args)
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
        )
        return run_worker(settings)

    return handle
