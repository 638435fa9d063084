"""The JSON Schemas in schemas/ are generated from the pydantic models and must not drift."""

import json
from datetime import UTC, datetime

import pytest

from stream.events import to_epoch_ms
from stream.records import MetricRecord, build_record
from stream.schemas import CONTRACTS, SCHEMA_DIR, render
from stream.windows import MONTH, first_containing


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_published_schema_matches_the_model(name):
    published = (SCHEMA_DIR / name).read_text()
    assert published == render(CONTRACTS[name]), (
        f"schemas/{name} is stale: run `python -m stream.schemas` and commit the result"
    )


def test_event_schema_states_the_required_fields():
    schema = json.loads((SCHEMA_DIR / "customer-event.schema.json").read_text())
    assert set(schema["required"]) == {"event_id", "type", "customer_id", "occurred_at"}
    assert schema["properties"]["type"]["$ref"].endswith("EventType")


def test_a_built_record_validates_against_the_record_model():
    k = first_containing(MONTH, to_epoch_ms(datetime(2026, 3, 5, tzinfo=UTC)))
    counts = (100, 95, 0, 0, 5, 0, 1000, 950, 50, 0, 0, 950, 0, 0, 0, 0, 0, 0)
    record = build_record(MONTH, k, "all", "all", counts, final=True, revision=2, watermark_ms=0)
    parsed = MetricRecord.model_validate(record)
    assert parsed.churn_rate == 0.05
    assert parsed.window_start.isoformat() == "2026-03-01T00:00:00+00:00"
    assert parsed.window_end.isoformat() == "2026-04-01T00:00:00+00:00"
