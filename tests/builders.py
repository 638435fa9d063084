"""Small builders of raw input events for tests."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import count
from typing import Any

import orjson

_ids = count()


def iso(*parts: int) -> str:
    return datetime(*parts, tzinfo=UTC).isoformat()


def event(customer: str, kind: str, when: str, **fields: Any) -> bytes:
    body = {
        "event_id": fields.pop("event_id", f"ev-{next(_ids)}"),
        "type": kind,
        "customer_id": customer,
        "occurred_at": when,
        **fields,
    }
    return orjson.dumps(body)
