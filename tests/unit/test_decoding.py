"""The fast path of decoding agrees with the pydantic model wherever it answers."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.decoding import decode_plain, plain_time_ms
from stream.events import EventType, InvalidEventError, LifecycleEvent, compact, parse_event

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
    fast = decode_plain(raw, dimensions)
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
    assert decode_plain(raw, ("plan", "region")) == slow


# -- timestamps ---------------------------------------------------------------------------
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _model_ms(text: str) -> int:
    return (datetime.fromisoformat(text) - _EPOCH) // timedelta(milliseconds=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2026-03-01T12:00:00+02:00", 1_772_359_200_000),
        ("2025-01-01T00:00:28.898Z", 1_735_689_628_898),
        ("2024-02-29T23:59:59.9999-00:30", 1_709_252_999_999),
        ("2000-01-01T00:00:00.0000005Z", None),  # seven fraction digits
        ("1969-12-31T23:59:59.9995Z", -1),  # floored, as the model's form is
        ("2023-02-29T00:00:00Z", None),
        ("2100-02-29T00:00:00Z", None),
        ("2000-02-29T00:00:00Z", 951_782_400_000),
        ("2026-03-01T24:00:00Z", None),
        ("2026-03-01T12:60:00Z", None),
        ("2026-03-01T12:00:60Z", None),
        ("2026-13-01T12:00:00Z", None),
        ("0000-01-01T00:00:00Z", None),
        ("2026-03-01T12:00:00+24:00", None),
        ("2026-03-01T12:00:00+05:60", None),
        ("2026-03-01T12:00:00", None),
        ("2026-03-01T12:00:00z", None),
        ("2026-03-01 12:00:00Z", None),
        ("2026-03-01T12:00:00.Z", None),
        ("2026-03-01T12:00:00+0200", None),
        ("2026-03-01T12:00:00+02:00:00", None),
        ("2026-03-01T12:00:00Z ", None),
        ("\uff12026-03-01T12:00:00Z", None),  # a fullwidth digit: left to the model
        ("2026-03-01T12:00:0\u0663Z", None),  # an Arabic-Indic digit
    ],
)
def test_plain_timestamps(text, expected):
    assert plain_time_ms(text) == expected
    if expected is not None:
        assert _model_ms(text) == expected


_fields = st.one_of(
    st.integers(0, 99).map("{:02d}".format), st.sampled_from(["", "7", "x1", "\u0663\u0663"])
)


@st.composite
def _near_timestamps(draw) -> str:
    """Strings shaped like RFC 3339 timestamps, every part sometimes out of range or off."""
    year = draw(
        st.one_of(st.integers(0, 9999).map("{:04d}".format), st.sampled_from(["99", "+2026"]))
    )
    date_part = f"{year}-{draw(_fields)}-{draw(_fields)}"
    separator = draw(st.sampled_from(["T", "T", "T", "t", " "]))
    time_part = f"{draw(_fields)}:{draw(_fields)}:{draw(_fields)}"
    fraction = draw(st.one_of(st.just(""), st.text("0123456789", max_size=8).map(".{}".format)))
    offset = draw(
        st.one_of(
            st.sampled_from(["Z", "", "z", "+00:00", "-00:00", "+0530", "+23:59:30"]),
            st.tuples(st.sampled_from("+-"), _fields, _fields).map("{0[0]}{0[1]}:{0[2]}".format),
        )
    )
    return f"{date_part}{separator}{time_part}{fraction}{offset}"


@settings(max_examples=3000, deadline=None)
@given(text=_near_timestamps())
def test_a_plain_timestamp_is_the_instant_fromisoformat_reads(text):
    fast = plain_time_ms(text)
    if fast is not None:
        assert fast == _model_ms(text)


@settings(max_examples=2000, deadline=None)
@given(moment=st.datetimes(timezones=st.timezones()), zulu=st.booleans())
def test_every_canonical_timestamp_takes_the_fast_path(moment, zulu):
    text = moment.isoformat()
    if zulu:
        text = text.replace("+00:00", "Z")
    if len(text) > 32 or moment.utcoffset().seconds % 60:  # offsets with seconds: the model
        return
    assert plain_time_ms(text) == _model_ms(text)
