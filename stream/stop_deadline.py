"""A bound on how long the worker may take to stop.

faust's stop can hang: once, after a crash, it waited forever in its final offset commit
(`Consumer.wait_empty`), the worker holding its port and its partitions, and a SIGTERM did
not help either. That cause is fixed (stream/faust_consumer.py commits nothing after a
crash); this bound stays for any hang not known yet. A process that is stopping has
nothing left to save that a restart does not redo (uncommitted input is read again; the
local tables are restored from their changelog unless the stop was clean), so past the
deadline it ends itself, from a thread, whatever the event loop is doing.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable

log = logging.getLogger("stream.worker")


class StopDeadline:
    """`arm()` when stopping begins; `cancel()` once the stop has finished. If neither
    happens in time, the process exits with `exit_code` (`exit` is `os._exit` except in
    tests)."""

    def __init__(
        self, seconds: float, exit_code: int, exit: Callable[[int], object] = os._exit
    ) -> None:
        self.seconds = seconds
        self.exit_code = exit_code
        self._exit = exit
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._cancelled = False

    @property
    def armed(self) -> bool:
        return self._timer is not None and not self._cancelled

    def arm(self) -> None:
        """Start the countdown; later calls do not restart it."""
        with self._lock:
            if self._timer is not None or self._cancelled:
                return
            self._timer = threading.Timer(self.seconds, self._expire)
            self._timer.daemon = True
            self._timer.name = "stop-deadline"
            self._timer.start()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._timer is not None:
                self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            if self._cancelled:
                return
        log.critical(
            "the worker did not stop within %gs (CHURN_STOP_TIMEOUT_SECONDS); exiting with "
            "code %d: uncommitted input is read again and the local tables are restored "
            "from their changelog on the next start",
            self.seconds,
            self.exit_code,
        )
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self._exit(self.exit_code)
