"""A stop that outlasts its deadline ends the process (stream/stop_deadline.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

from stream.stop_deadline import StopDeadline


class RecordedExits:
    def __init__(self) -> None:
        self.codes: list[int] = []
        self.first = threading.Event()

    def __call__(self, code: int) -> None:
        self.codes.append(code)
        self.first.set()


def test_an_armed_deadline_exits_with_its_code_when_it_expires() -> None:
    exits = RecordedExits()
    deadline = StopDeadline(0.05, exit_code=3, exit=exits)
    deadline.arm()
    assert exits.first.wait(10)
    assert exits.codes == [3]


def test_arming_twice_keeps_one_countdown() -> None:
    exits = RecordedExits()
    deadline = StopDeadline(0.05, exit_code=1, exit=exits)
    deadline.arm()
    deadline.arm()
    assert exits.first.wait(10)
    assert deadline._timer is not None
    deadline._timer.join(10)
    assert exits.codes == [1]


def test_a_cancelled_deadline_never_exits() -> None:
    exits = RecordedExits()
    deadline = StopDeadline(0.05, exit_code=1, exit=exits)
    deadline.arm()
    deadline.cancel()
    assert deadline._timer is not None
    deadline._timer.join(10)
    assert not exits.first.wait(0.2)
    assert exits.codes == []
    assert not deadline.armed


def test_a_deadline_cancelled_before_it_is_armed_stays_disarmed() -> None:
    exits = RecordedExits()
    deadline = StopDeadline(0.01, exit_code=1, exit=exits)
    deadline.cancel()
    deadline.arm()
    assert deadline._timer is None
    assert exits.codes == []


def test_a_process_whose_event_loop_hangs_while_stopping_exits_with_the_code() -> None:
    """The real exit, in a child process whose event loop waits forever (as faust's stop
    did when its final commit never returned)."""
    script = textwrap.dedent(
        """
        import asyncio, logging
        from stream.stop_deadline import StopDeadline

        logging.basicConfig(level=logging.INFO)
        deadline = StopDeadline(0.5, exit_code=7)

        async def stop_that_hangs():
            deadline.arm()
            await asyncio.Event().wait()

        asyncio.run(stop_that_hangs())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 7, done.stderr
    assert "did not stop within 0.5s (CHURN_STOP_TIMEOUT_SECONDS); exiting with code 7" in (
        done.stderr
    )
