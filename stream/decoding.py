"""Raw input bytes to a `LifecycleEvent`: a fast path for plainly valid events, the model
for everything else. No Kafka here; compiled with mypyc (events.py, whose pydantic model
cannot be, holds the contract).

Most input is plainly well-formed. `decode_plain` accepts only a strict subset of what the
pydantic model accepts (tests/unit/test_decoding.py checks that it returns the same event
whenever it returns one) and leaves everything else, and every error message, to
`parse_event`.
"""

from __future__ import annotations

import math
from typing import Any, Final

import orjson

from stream.events import (
    EVENT_TYPES,
    EVENTS_WITH_MRR,
    MAX_ATTRIBUTE_KEY_LENGTH,
    MAX_ATTRIBUTE_VALUE_LENGTH,
    MAX_ATTRIBUTES,
    MAX_ID_LENGTH,
    MAX_MESSAGE_BYTES,
    MAX_MONEY,
    EventType,
    LifecycleEvent,
    compact,
    parse_event,
    to_micros,
)

_EARLIEST_MS: Final = 946_684_800_000  # EARLIEST_EVENT_TIME
_PURCHASE: Final = EventType.PURCHASE
_NO_ATTRIBUTES: Final[dict[str, str]] = {}
_new_event: Final = tuple.__new__  # a named tuple without its Python-level __new__


def decode_event(raw: bytes, dimensions: tuple[str, ...]) -> LifecycleEvent:
    """Validate and compact one input message; raises `InvalidEventError` with its reason."""
    event = decode_plain(raw, dimensions)
    if event is not None:
        return event
    return compact(parse_event(raw), dimensions)


def decode_plain(raw: bytes, dimensions: tuple[str, ...]) -> LifecycleEvent | None:
    """The event if `raw` is a plainly valid event, else None (not necessarily invalid)."""
    if len(raw) > MAX_MESSAGE_BYTES:
        return None
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(body) is not dict:
        return None
    event_id: Any = body.get("event_id")
    customer_id: Any = body.get("customer_id")
    type_name: Any = body.get("type")
    kind = EVENT_TYPES.get(type_name) if type(type_name) is str else None
    if kind is None or not (_plain_id(event_id) and _plain_id(customer_id)):
        return None
    occurred_at: Any = body.get("occurred_at")
    time_ms = plain_time_ms(occurred_at) if type(occurred_at) is str else None
    if time_ms is None or time_ms < _EARLIEST_MS:
        return None
    mrr: Any = body.get("mrr")
    amount: Any = body.get("amount")
    mrr_micros = None if mrr is None else _plain_money(mrr)
    amount_micros = None if amount is None else _plain_money(amount)
    if (mrr is not None and (mrr_micros is None or kind not in EVENTS_WITH_MRR)) or (
        (amount is None) == (kind is _PURCHASE) or (amount is not None and amount_micros is None)
    ):
        return None
    attributes: Any = body.get("attributes", _NO_ATTRIBUTES)
    if attributes is not _NO_ATTRIBUTES and not _plain_attributes(attributes):
        return None
    segment = tuple([attributes.get(name) for name in dimensions])
    return _new_event(  # type: ignore[no-any-return]
        LifecycleEvent,
        (customer_id, event_id, kind, time_ms, mrr_micros, amount_micros, segment),
    )


def _plain_id(value: Any) -> bool:
    return type(value) is str and 0 < len(value) <= MAX_ID_LENGTH


def _plain_money(value: Any) -> int | None:
    """Micros of a plain JSON number within the contract's range, else None."""
    if type(value) is int:
        return to_micros(float(value)) if 0 <= value <= MAX_MONEY else None
    if type(value) is float and math.isfinite(value) and 0 <= value <= MAX_MONEY:
        return to_micros(value)
    return None


def _plain_attributes(value: Any) -> bool:
    if type(value) is not dict or len(value) > MAX_ATTRIBUTES:
        return False
    for key, text in value.items():
        if not (0 < len(key) <= MAX_ATTRIBUTE_KEY_LENGTH and type(text) is str):
            return False
        if len(text) > MAX_ATTRIBUTE_VALUE_LENGTH:
            return False
    return True


# -- timestamps --------------------------------------------------------------------------
# `YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|±HH:MM)` with ASCII digits and every field in range:
# exactly what `datetime.fromisoformat` reads as the same instant. Anything else, such as
# a leap second or another ISO 8601 spelling, returns None and goes to the model.
_DAYS_BEFORE_MONTH: Final = (0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)
_DAYS_IN_MONTH: Final = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_SECONDS_LENGTH: Final = 19  # "YYYY-MM-DDTHH:MM:SS"
_DAYS_TO_1970: Final = 719_162  # days from 0001-01-01 to 1970-01-01


_DOT: Final = 46  # "."
_DASH: Final = 45  # "-"
_COLON: Final = 58  # ":"
_ZERO: Final = 48  # "0"
_T: Final = 84  # "T"
_Z: Final = 90  # "Z"
_PLUS: Final = 43  # "+"
_FRACTION_SCALE: Final = (0, 100_000, 10_000, 1_000, 100, 10, 1)  # by fraction digits


def plain_time_ms(value: str) -> int | None:
    """Epoch milliseconds (floored) of a plain RFC 3339 timestamp, else None."""
    if not value.isascii():
        return None
    # One byte per character; indexing bytes gives ints, where indexing a str makes a
    # one-character string per digit (this parser was ~30 % of decoding an event).
    text = value.encode()
    length = len(text)
    if length < _SECONDS_LENGTH + 1 or not _separators_at(text):
        return None
    year = _digits(text, 0, 4)
    month = _digits(text, 5, 7)
    day = _digits(text, 8, 10)
    hour = _digits(text, 11, 13)
    minute = _digits(text, 14, 16)
    second = _digits(text, 17, 19)
    if not (_valid_date(year, month, day) and 0 <= hour < 24 and 0 <= minute < 60):
        return None
    if not 0 <= second < 60:
        return None
    position = _SECONDS_LENGTH
    micros = 0
    if text[position] == _DOT:
        position = _fraction_end(text)
        digits = position - _SECONDS_LENGTH - 1
        if not 1 <= digits <= 6:
            return None
        micros = _digits(text, _SECONDS_LENGTH + 1, position) * _FRACTION_SCALE[digits]
    offset = _offset_seconds(text, position)
    if offset is None:
        return None
    days = _days_from_year_one(year, month, day) - _DAYS_TO_1970
    seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset
    return (seconds * 1_000_000 + micros) // 1_000


def _separators_at(text: bytes) -> bool:
    return (
        text[4] == _DASH
        and text[7] == _DASH
        and text[10] == _T
        and text[13] == _COLON
        and text[16] == _COLON
    )


def _digits(text: bytes, start: int, end: int) -> int:
    """The number the ASCII digits text[start:end] spell, or -1 if any is not one."""
    number = 0
    for index in range(start, end):
        digit = text[index] - _ZERO
        if not 0 <= digit <= 9:
            return -1
        number = number * 10 + digit
    return number


def _fraction_end(text: bytes) -> int:
    """Where the digits after the seconds' "." end (at most 7 of them are looked at)."""
    end = _SECONDS_LENGTH + 1
    while end < len(text) and end <= _SECONDS_LENGTH + 7 and 0 <= text[end] - _ZERO <= 9:
        end += 1
    return end


def _offset_seconds(text: bytes, position: int) -> int | None:
    """The UTC offset (seconds) that ends `text` at `position`, else None."""
    rest = len(text) - position
    if rest == 1 and text[position] == _Z:
        return 0
    if rest != 6 or text[position + 3] != _COLON:
        return None
    sign = text[position]
    hours = _digits(text, position + 1, position + 3)
    minutes = _digits(text, position + 4, position + 6)
    if sign not in (_PLUS, _DASH) or not (0 <= hours < 24 and 0 <= minutes < 60):
        return None
    seconds = hours * 3_600 + minutes * 60
    return seconds if sign == _PLUS else -seconds


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _valid_date(year: int, month: int, day: int) -> bool:
    if not (year >= 1 and 1 <= month <= 12 and day >= 1):
        return False
    return day <= _DAYS_IN_MONTH[month] + (1 if month == 2 and _leap(year) else 0)


def _days_from_year_one(year: int, month: int, day: int) -> int:
    """Days from 0001-01-01 to the date (proleptic Gregorian), as `date.toordinal() - 1`."""
    before = year - 1
    days = before * 365 + before // 4 - before // 100 + before // 400
    days += _DAYS_BEFORE_MONTH[month] + (1 if month > 2 and _leap(year) else 0)
    return days + day - 1
