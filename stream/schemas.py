"""Generate the published JSON Schemas in schemas/ from the pydantic models.

Run `python -m stream.schemas` after changing a contract; a test fails when the files
in schemas/ differ from what the models generate.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from stream.events import CustomerEvent
from stream.records import MetricRecord
from stream.spikes import SpikeAlert

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
CONTRACTS: dict[str, type[BaseModel]] = {
    "customer-event.schema.json": CustomerEvent,
    "metric-record.schema.json": MetricRecord,
    "churn-alert.schema.json": SpikeAlert,
}


def render(model: type[BaseModel]) -> str:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **model.model_json_schema(),
    }
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in CONTRACTS.items():
        path = directory / name
        path.write_text(render(model))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write():
        sys.stdout.write(f"wrote {path}\n")
