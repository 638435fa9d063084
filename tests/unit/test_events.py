"""The input contract: what is accepted, and the reason code of everything rejected."""

import json
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.events import (
    MAX_MESSAGE_BYTES,
    EventType,
    InvalidEventError,
    LifecycleEvent,
    _decode_plain,
    compact,
    decode_event,
    parse_event,
)

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


# -- the fast path agrees with the pydantic model -------------------------------------------
_texts = st.one_of(
    st.sampled_from(["", "e", "c-1", "x" * 128, "x" * 129, "é", "\x00", " "]), st.text(max_size=8)
)
_times = st.one_of(
    st.sampled_from(
        [
            "2026-03-01T12:00:00Z",
            "2026-03-01T12:00:00.5+02:00",
            "2026-03-01T12:00:00.123456-05:30",
            "2026-03-01T12:00:00.1234567Z",
            "2026-03-01T12:00:00",
            "2026-03-01 12:00:00Z",
            "2026-03-01T12:00:60Z",
            "2026-02-30T12:00:00Z",
            "1999-12-31T23:59:59.999Z",
            "2000-01-01T00:00:00Z",
            "2026-03-01T12:00:00+24:00",
            "2026-03-01",
            "0000-01-01T00:00:00Z",
        ]
    ),
    st.datetimes(timezones=st.timezones()).map(lambda moment: moment.isoformat()),
    st.integers(),
)
_money = st.one_of(
    st.none(),
    st.sampled_from([0, -0.0, 1, 9.99, 1e9, 1e9 + 1, -1, True, "5", float("nan")]),
    st.floats(allow_nan=False),
    st.integers(),
    st.lists(st.integers(), max_size=2),
)
_containers = st.one_of(
    st.lists(st.integers(), max_size=2), st.dictionaries(_texts, _texts, max_size=2)
)
_attributes = st.one_of(
    st.none(),
    st.dictionaries(_texts, st.one_of(_texts, st.integers(), st.none()), max_size=4),
    st.sampled_from([{f"k{i}": "v" for i in range(33)}, {"plan": "x" * 129}, [], "plan"]),
)


@st.composite
def _bodies(draw) -> bytes:
    body = {
        "event_id": draw(st.one_of(_texts, st.integers(), st.none(), _containers)),
        "type": draw(
            st.one_of(
                st.sampled_from([*EventType, "paused", "Churned"]), st.integers(), _containers
            )
        ),
        "customer_id": draw(st.one_of(_texts, st.none(), _containers)),
        "occurred_at": draw(st.one_of(_times, _containers)),
        "mrr": draw(_money),
        "amount": draw(_money),
        "attributes": draw(_attributes),
        "extra": draw(st.one_of(st.none(), st.integers())),
    }
    dropped = draw(st.sets(st.sampled_from(sorted(body))))
    kept = {key: value for key, value in body.items() if key not in dropped}
    return json.dumps(kept, allow_nan=True).encode()


@settings(max_examples=3000, deadline=None)
@given(raw=_bodies(), dimensions=st.sampled_from([(), ("plan",), ("plan", "k1")]))
def test_the_fast_path_decodes_exactly_what_the_model_decodes(raw, dimensions):
    fast = _decode_plain(raw, dimensions)
    try:
        slow = compact(parse_event(raw), dimensions)
    except InvalidEventError:
        assert fast is None  # the fast path never accepts what the contract rejects
        return
    if fast is not None:
        assert fast == slow
        assert type(fast) is LifecycleEvent


@st.composite
def _plain_bodies(draw) -> dict:
    kind = draw(st.sampled_from(list(EventType)))
    moment = draw(
        st.datetimes(
            min_value=datetime(2000, 1, 2), max_value=datetime(2100, 1, 1), timezones=st.timezones()
        )
    )
    body = {
        "event_id": draw(st.text(min_size=1, max_size=128)),
        "type": kind.value,
        "customer_id": draw(st.text(min_size=1, max_size=128)),
        "occurred_at": moment.isoformat().replace("+00:00", draw(st.sampled_from(["Z", "+00:00"]))),
        "attributes": draw(
            st.dictionaries(st.text(min_size=1, max_size=64), st.text(max_size=128), max_size=32)
        ),
    }
    money = st.one_of(st.integers(0, 10**9), st.floats(0, 1e9))
    if kind in ("subscribed", "reactivated", "plan_changed", "renewed") and draw(st.booleans()):
        body["mrr"] = draw(money)
    if kind == "purchase":
        body["amount"] = draw(money)
    return body


@settings(max_examples=1000, deadline=None)
@given(body=_plain_bodies())
def test_plain_events_take_the_fast_path_and_decode_as_the_model_does(body):
    raw = json.dumps(body).encode()
    slow = compact(parse_event(raw), ("plan", "region"))
    if len(body["occurred_at"]) > 32 or body["occurred_at"][19] not in ".Z+-":
        return  # offsets with seconds and the like are left to the model
    assert _decode_plain(raw, ("plan", "region")) == slow
