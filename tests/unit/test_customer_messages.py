"""How the ingest stage cuts a routed batch into customer-batch messages
(stream/routing.py: `encoded_runs`, `customer_messages`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.events import EventType, LifecycleEvent
from stream.routing import (
    MAX_EVENTS_PER_CUSTOMER_MESSAGE,
    RoutedBatch,
    customer_messages,
    decode_customer_batch,
    encode_customer_batch,
    encoded_runs,
)

WATERMARKS = {0: 1_780_000_000_000, 3: 1_780_000_500_000}


def events(count: int, id_length: int = 8) -> list[LifecycleEvent]:
    return [
        LifecycleEvent(
            customer_id=f"c{index:0{id_length}d}",
            event_id=f"e{index}",
            type=EventType.PURCHASE,
            time_ms=1_780_000_000_000 + index,
            mrr_micros=None,
            amount_micros=5_000_000,
            segment=("pro",),
        )
        for index in range(count)
    ]


def decoded(messages: list[bytes]) -> list[LifecycleEvent]:
    found: list[LifecycleEvent] = []
    for raw in messages:
        watermarks, batch = decode_customer_batch(raw)
        assert watermarks == WATERMARKS, "every message carries the watermarks"
        found.extend(batch)
    return found


ONE_EVENT_BYTES = len(encode_customer_batch(WATERMARKS, events(1)))
TWO_EVENTS_BYTES = len(encode_customer_batch(WATERMARKS, events(2)))


@pytest.mark.parametrize(
    ("count", "max_bytes", "max_events", "sizes"),
    [
        (0, 10_000, 4, [0]),  # no events: one message, for the watermarks
        (1, 10_000, 4, [1]),
        (4, 10_000, 4, [4]),
        (5, 10_000, 4, [4, 1]),
        (9, 10_000, 4, [4, 4, 1]),
        (8, 10_000, 3, [3, 3, 2]),
        # over the byte bound: cut to what fits (nine tenths of it), and so are the rest
        # (messages of 1-9 events take 114, 179, 244, ... 634 bytes: 65 a further event)
        (8, TWO_EVENTS_BYTES, 8, [1, 1, 1, 1, 1, 1, 1, 1]),
        (9, 400, 8, [4, 4, 1]),  # 8 events: 569 bytes; 8 x 400 / 569 x 0.9 -> 4
        (9, 450, 8, [5, 4]),  # 8 x 450 / 569 x 0.9 -> 5
        # a single event over the byte bound still makes a message
        (2, ONE_EVENT_BYTES // 2, 4, [1, 1]),
    ],
)
def test_runs_hold_at_most_max_events_and_are_cut_to_fit_the_byte_bound(
    count: int, max_bytes: int, max_events: int, sizes: list[int]
) -> None:
    batch = events(count)
    messages = encoded_runs(WATERMARKS, batch, max_bytes, max_events)
    assert [len(decode_customer_batch(raw)[1]) for raw in messages] == sizes
    assert decoded(messages) == batch


def test_the_default_cuts_a_large_partition_batch_into_messages_of_the_default_size() -> None:
    batch = events(2 * MAX_EVENTS_PER_CUSTOMER_MESSAGE + 1)  # ~70 bytes each: they fit
    messages = encoded_runs(WATERMARKS, batch)
    sizes = [len(decode_customer_batch(raw)[1]) for raw in messages]
    assert sizes == [MAX_EVENTS_PER_CUSTOMER_MESSAGE, MAX_EVENTS_PER_CUSTOMER_MESSAGE, 1]
    assert decoded(messages) == batch


@given(
    count=st.integers(0, 60),
    max_events=st.integers(1, 25),
    max_bytes=st.integers(1, 4_000),
    id_length=st.integers(1, 40),
)
def test_messages_keep_every_event_in_order_within_both_bounds(
    count: int, max_events: int, max_bytes: int, id_length: int
) -> None:
    batch = events(count, id_length)
    messages = encoded_runs(WATERMARKS, batch, max_bytes, max_events)
    assert decoded(messages) == batch
    for raw in messages:
        held = len(decode_customer_batch(raw)[1])
        assert held <= max(1, max_events)
        assert len(raw) <= max_bytes or held <= 1  # a lone event, or the watermarks alone


def test_every_partition_gets_a_message_once_the_input_watermark_moved() -> None:
    routed = RoutedBatch(by_partition={2: events(3)}, latest_by_input={0: 1_780_000_000_000})
    messages = customer_messages(routed, WATERMARKS, partitions=4)
    assert [target for target, _ in messages] == [0, 1, 2, 3]
    assert [len(decode_customer_batch(raw)[1]) for _, raw in messages] == [0, 0, 3, 0]


def test_a_batch_that_moved_no_input_watermark_sends_nothing() -> None:
    assert customer_messages(RoutedBatch(), WATERMARKS, partitions=4) == []
