"""The input contract: what is accepted, and the reason code of everything rejected."""

import tracemalloc

import orjson
import pytest

from stream.decoding import decode_event
from stream.events import MAX_MESSAGE_BYTES, EventType, InvalidEventError, compact_json

GOOD = (
    b'{"event_id":"e1","type":"subscribed","customer_id":"c1",'
    b'"occurred_at":"2026-03-01T12:00:00+02:00","mrr":9.99,"attributes":{"plan":"pro","x":"y"}}'
)


def test_a_valid_event_becomes_integers():
    event = decode_event(GOOD, ("plan", "region"))
    assert event.type is EventType.SUBSCRIBED
    assert event.time_ms == 1772359200000  # 2026-03-01T10:00:00Z
    assert event.mrr_micros == 9_990_000
    assert event.segment == ("pro", None)


def test_unknown_fields_are_ignored():
    raw = (
        b'{"event_id":"e","type":"activity","customer_id":"c",'
        b'"occurred_at":"2026-03-01T00:00:00Z","v":2}'
    )
    assert decode_event(raw, ()).event_id == "e"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "not_json"),
        (b"\xff\xfe", "not_json"),
        (b"[1, 2]", "invalid_event"),
        (
            b'{"type":"churned","customer_id":"c","occurred_at":"2026-03-01T00:00:00Z"}',
            "missing_field",
        ),
        (
            b'{"event_id":"e","type":"paused","customer_id":"c","occurred_at":"2026-03-01T00:00:00Z"}',
            "unknown_type",
        ),
        (
            b'{"event_id":"e","type":"churned","customer_id":"c","occurred_at":"2026-03-01T00:00:00"}',
            "naive_timestamp",
        ),
        (
            b'{"event_id":"e","type":"churned","customer_id":"c","occurred_at":1767225600}',
            "invalid_occurred_at",
        ),
        (
            b'{"event_id":"e","type":"churned","customer_id":"","occurred_at":"2026-03-01T00:00:00Z"}',
            "invalid_customer_id",
        ),
        (
            b'{"event_id":"e","type":"subscribed","customer_id":"c","occurred_at":"2026-03-01T00:00:00Z",'
            b'"mrr":-1}',
            "invalid_mrr",
        ),
        (
            b'{"event_id":"e","type":"subscribed","customer_id":"c","occurred_at":"2026-03-01T00:00:00Z",'
            b'"mrr":"ten"}',
            "invalid_mrr",
        ),
        (
            b'{"event_id":"e","type":"churned","customer_id":"c","occurred_at":"2026-03-01T00:00:00Z",'
            b'"mrr":5}',
            "mrr_not_allowed",
        ),
        (
            b'{"event_id":"e","type":"purchase","customer_id":"c","occurred_at":"2026-03-01T00:00:00Z"}',
            "missing_field",
        ),
        (
            b'{"event_id":"e","type":"activity","customer_id":"c","occurred_at":"2026-03-01T00:00:00Z",'
            b'"amount":3}',
            "amount_not_allowed",
        ),
        (
            b'{"event_id":"e","type":"activity","customer_id":"c","occurred_at":"1999-12-31T23:59:59Z"}',
            "too_old",
        ),
        (
            b'{"event_id":"e","type":"activity","customer_id":"c","occurred_at":"2026-03-01T00:00:00Z",'
            b'"attributes":{"plan":1}}',
            "invalid_attributes",
        ),
        (
            b'{"event_id":"e","type":"activity","customer_id":"c","occurred_at":"2026-03-01T00:00:00Z",'
            b'"attributes":{"plan":"' + b"x" * 129 + b'"}}',
            "invalid_attributes",
        ),
        (
            b'{"event_id":"' + b"e" * 129 + b'","type":"activity","customer_id":"c",'
            b'"occurred_at":"2026-03-01T00:00:00Z"}',
            "invalid_event_id",
        ),
        (b" " * (MAX_MESSAGE_BYTES + 1), "too_large"),
    ],
)
def test_rejections_carry_a_stable_reason(raw, reason):
    with pytest.raises(InvalidEventError) as caught:
        decode_event(raw, ("plan",))
    assert caught.value.reason == reason
    assert caught.value.detail


def test_too_many_attributes_are_rejected():
    attributes = ",".join(f'"k{i}":"v"' for i in range(33))
    raw = (
        b'{"event_id":"e","type":"activity","customer_id":"c","occurred_at":"2026-03-01T00:00:00Z",'
        b'"attributes":{' + attributes.encode() + b"}}"
    )
    with pytest.raises(InvalidEventError) as caught:
        decode_event(raw, ())
    assert caught.value.reason == "invalid_attributes"


@pytest.mark.parametrize(
    "value",
    [[], {"a": 1}, [["e1", 1, 1700000000000, 5000000, None, ["pro", "eu"]]] * 3, "x" * 5000],
)
def test_compact_json_is_orjson_in_a_buffer_of_its_own_size(value):
    assert compact_json(value) == orjson.dumps(value)
    tracemalloc.start()
    try:
        kept = [compact_json(value) for _ in range(100)]
        held = tracemalloc.get_traced_memory()[0] / len(kept)
    finally:
        tracemalloc.stop()
    assert held < len(kept[0]) + 200, "each result holds about its own length"
