"""`queued_takes`, the customer stage's takes, on a real faust stream over an in-memory
channel (no broker): a take is the next event and everything queued behind it, up to a
bound, and its events are acknowledged only once the body has handled them."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest
from faust.types import EventT, StreamT

from stream.app import queued_takes


def _channel_and_stream() -> tuple[Any, StreamT[int]]:
    """An in-memory channel and a stream over it, of an app made in the running event loop
    (faust binds its queues to the loop current when they are made); the broker is never
    contacted. The stream must exist before anything is sent: a channel delivers only to
    the streams already reading it."""
    app = faust.App("queued-takes", broker="kafka://127.0.0.1:1", web_enabled=False)
    app.flow_control.resume()  # a worker's flow is active once its partitions are assigned
    channel = app.channel(maxsize=100)
    return channel, channel.stream()


async def _send(channel: Any, values: range) -> None:
    for value in values:
        await channel.send(value=value)


def _values(events: list[EventT]) -> list[int]:
    return [event.value for event in events]


async def test_a_take_holds_the_next_event_and_all_queued_behind_it_up_to_the_bound() -> None:
    channel, stream = _channel_and_stream()
    await _send(channel, range(5))
    takes: list[list[int]] = []
    async for events in queued_takes(stream, 3, 0.01):
        takes.append(_values(events))
        if len(takes) == 2:
            await _send(channel, range(5, 12))  # queued while the body runs
        if takes[-1][-1] == 11:
            break
    assert takes == [[0, 1, 2], [3, 4], [5, 6, 7], [8, 9, 10], [11]]


async def test_a_take_waits_once_for_what_arrives_soon_after_the_queue_runs_dry() -> None:
    channel, stream = _channel_and_stream()
    takes = queued_takes(stream, 256, 0.5)
    await _send(channel, range(2))
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, lambda: asyncio.ensure_future(_send(channel, range(2, 4))))
    # After the wait: the queue runs dry again, and the take ends without a second one.
    loop.call_later(0.8, lambda: asyncio.ensure_future(_send(channel, range(4, 5))))
    assert _values(await asyncio.wait_for(anext(takes), 5)) == [0, 1, 2, 3]
    assert _values(await asyncio.wait_for(anext(takes), 5)) == [4]
    await takes.aclose()


async def test_a_take_does_not_wait_beyond_its_window() -> None:
    channel, stream = _channel_and_stream()
    takes = queued_takes(stream, 256, 0.01)
    await _send(channel, range(2))
    assert _values(await asyncio.wait_for(anext(takes), 5)) == [0, 1]
    late = asyncio.ensure_future(anext(takes))
    await asyncio.sleep(0.2)
    assert not late.done()  # nothing queued: it waits for the next event, however long
    await _send(channel, range(2, 3))
    assert _values(await asyncio.wait_for(late, 5)) == [2]
    await takes.aclose()


async def test_events_are_acknowledged_once_the_body_has_handled_them() -> None:
    channel, stream = _channel_and_stream()
    takes = queued_takes(stream, 256, 0.01)
    await _send(channel, range(3))
    first = await asyncio.wait_for(anext(takes), 5)
    assert [event.message.acked for event in first] == [False] * 3  # the body is running
    await _send(channel, range(3, 4))
    second = await asyncio.wait_for(anext(takes), 5)
    assert [event.message.acked for event in first] == [True] * 3
    assert [event.message.acked for event in second] == [False]
    await takes.aclose()


async def test_a_take_whose_body_raised_stays_unacknowledged() -> None:
    channel, stream = _channel_and_stream()
    takes = queued_takes(stream, 256, 0.01)
    await _send(channel, range(2))
    taken = await asyncio.wait_for(anext(takes), 5)
    with pytest.raises(RuntimeError, match="apply failed"):
        await takes.athrow(RuntimeError("apply failed"))
    assert [event.message.acked for event in taken] == [False, False]
