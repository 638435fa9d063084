"""When the customer stage stops letting a backlog queue up (`_let_backlog_queue`,
CHURN_CUSTOMER_BACKLOG_HOLD_MS): at once without a backlog or with the wait off, as soon as
the ingest stage catches up or faust suspends the flow (a rebalance or a stop waits for the
stage), and at the latest when the wait is over. A fake worker stands in for the real one;
tests/integration/test_backlog_hold.py runs the stage on the broker."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

import stream.app
from stream.app import BACKLOG_POLL_S, _let_backlog_queue

BATCH = 1_000  # CHURN_BATCH_MAX_RECORDS


class FakeIngest:
    def __init__(self, backlogs: list[int]) -> None:
        self._backlogs = backlogs  # one per look; the last one stays

    def backlog(self) -> int:
        return self._backlogs.pop(0) if len(self._backlogs) > 1 else self._backlogs[0]


class FakeFlow:
    def __init__(self, active_looks: int | None) -> None:
        self._left = active_looks  # None: never suspended

    def is_active(self) -> bool:
        if self._left is None:
            return True
        self._left -= 1
        return self._left >= 0


def fake_worker(hold_ms: int, backlogs: list[int], active_looks: int | None = None) -> object:
    return SimpleNamespace(
        settings=SimpleNamespace(customer_backlog_hold_ms=hold_ms, batch_max_records=BATCH),
        ingest=FakeIngest(backlogs),
        app=SimpleNamespace(flow_control=FakeFlow(active_looks)),
    )


class FakeClock:
    """Stands in for the stage's clock and sleep: a sleep only moves the time on."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1


@pytest.mark.parametrize(
    ("hold_ms", "backlogs", "active_looks", "sleeps"),
    [
        (0, [10**6], None, 0),  # the wait is off
        (2_000, [0], None, 0),  # no backlog
        (2_000, [BATCH], None, 0),  # one batch behind is not a backlog
        (300, [BATCH + 1], None, round(0.3 / BACKLOG_POLL_S)),  # a backlog throughout
        (5_000, [BATCH * 10, BATCH * 5, 0], None, 2),  # caught up at the third look
        (5_000, [10**6], 2, 2),  # the flow suspended at the third look
    ],
)
def test_the_wait_ends_when_the_backlog_or_the_flow_says_so(
    monkeypatch, hold_ms, backlogs, active_looks, sleeps
):
    clock = FakeClock()
    monkeypatch.setattr(stream.app, "time", clock)
    monkeypatch.setattr(stream.app, "asyncio", clock)
    asyncio.run(_let_backlog_queue(fake_worker(hold_ms, backlogs, active_looks)))  # type: ignore[arg-type]
    assert clock.sleeps == sleeps
    assert clock.now <= hold_ms / 1000 + BACKLOG_POLL_S
