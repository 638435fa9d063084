"""The customer stage reads a batch's histories in one call where the store offers it."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.customers import CustomerStage
from stream.decoding import decode_event
from tests.builders import event, iso

DIMENSIONS = ("plan",)


class ManyReadsStore(dict[str, Any]):
    """A dict that also reads many keys at once, and records those reads."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[list[str]] = []

    def get_many(self, keys: list[str]) -> list[Any]:
        self.reads.append(list(keys))
        return [self.get(key) for key in keys]


_events = st.lists(
    st.tuples(
        st.sampled_from(["c1", "c2", "c3"]),
        st.sampled_from(["subscribed", "churned", "purchase", "activity", "plan_changed"]),
        st.integers(1, 28),
        st.integers(0, 5),  # event number: repeats are duplicates
    ),
    max_size=12,
)


def _decoded(customer: str, kind: str, day: int, number: int) -> Any:
    fields: dict[str, Any] = {"event_id": f"{customer}-{kind}-{day}-{number}"}
    if kind == "purchase":
        fields["amount"] = 4
    if kind in ("subscribed", "plan_changed"):
        fields |= {"mrr": 10 + number, "attributes": {"plan": f"p{number % 2}"}}
    return decode_event(event(customer, kind, iso(2026, 3, day), **fields), DIMENSIONS)


@settings(max_examples=200, deadline=None)
@given(batches=st.lists(_events, min_size=1, max_size=4))
def test_reading_a_batch_at_once_changes_nothing(batches):
    plain: dict[str, Any] = {}
    many = ManyReadsStore()
    by_get = CustomerStage(plain, DIMENSIONS, None)
    by_get_many = CustomerStage(many, DIMENSIONS, None)
    for number, batch in enumerate(batches):
        events = [_decoded(*spec) for spec in batch]
        watermark = 1_772_323_200_000 + number * 86_400_000
        expected = by_get.apply_batch(events, watermark)
        assert by_get_many.apply_batch(events, watermark) == expected
        customers = list(dict.fromkeys(e.customer_id for e in events))
        assert many.reads[-1] == customers  # each customer once, in arrival order
    assert dict(many) == plain
    assert len(many.reads) == len(batches)
