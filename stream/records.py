"""The output contract: one metric record per (window, dimension, segment, window_start)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from pydantic import BaseModel, ConfigDict, Field

from stream import windows
from stream.formulas import Counts, derived_metrics, published_counts


class MetricRecord(BaseModel):
    """Counts and metrics of one window for one segment, as published on the output topic."""

    model_config = ConfigDict(
        frozen=True, json_schema_extra={"title": "churn-stream metric record"}
    )

    window: str = Field(description="Window kind: day, week, month, quarter, year, rolling_Nd.")
    window_start: datetime = Field(description="Inclusive start, UTC.")
    window_end: datetime = Field(description="Exclusive end, UTC.")
    dimension: str = Field(description="'all' or a configured attribute name.")
    segment: str = Field(description="Attribute value ('all', 'unknown', 'other' are reserved).")
    final: bool = Field(description="The watermark has passed window_end plus the grace period.")
    revision: int = Field(ge=0, description="Increases by one every time this key is re-emitted.")
    watermark: datetime | None = Field(description="The worker's event-time watermark.")

    customers_start: int = Field(description="Active at window start.")
    customers_end: int = Field(description="Active at window end (so far, for an open window).")
    new_customers: int = Field(description="First-ever activation in the window.")
    reactivated_customers: int = Field(description="Returned in the window, not new.")
    churned_customers: int = Field(description="Active at start, not at end.")
    new_customers_lost: int = Field(description="New in the window and not active at end.")
    mrr_start: float
    mrr_end: float
    churned_mrr: float = Field(description="MRR at start of the churned customers.")
    expansion_mrr: float
    contraction_mrr: float
    retained_mrr: float = Field(description="MRR at end of customers active at start and end.")
    new_mrr: float
    reactivation_mrr: float
    purchasing_customers: int
    purchases: int
    purchase_amount: float
    repeat_purchasers: int = Field(description="Purchasing customers with 2+ purchases ever.")

    churn_rate: float | None
    retention_rate: float | None
    net_growth_rate: float | None
    churn_rate_with_new: float | None
    gross_mrr_churn_rate: float | None
    net_revenue_retention: float | None
    repeat_purchase_rate: float | None
    average_purchase_value: float | None
    purchase_frequency_monthly: float | None
    customer_lifetime_value: float | None
    monthly_churn_rate: float | None
    annual_churn_rate: float | None


def _utc(time_ms: int) -> datetime:
    return datetime.fromtimestamp(time_ms / 1000, tz=UTC)


def record_key(window: str, dimension: str, segment: str, window_start_ms: int) -> str:
    return f"{window}/{dimension}/{segment}/{_utc(window_start_ms).isoformat()}"


def build_record(
    kind: windows.WindowKind,
    k: int,
    dimension: str,
    segment: str,
    counts: Counts,
    *,
    final: bool,
    revision: int,
    watermark_ms: int | None,
) -> dict[str, object]:
    """The record of window `k` of `kind` as a JSON-ready dict."""
    start, end = windows.bounds(kind, k)
    return record_for_bounds(
        kind.name,
        start,
        end,
        dimension,
        segment,
        counts,
        final=final,
        revision=revision,
        watermark_ms=watermark_ms,
    )


def record_for_bounds(
    window: str,
    start_ms: int,
    end_ms: int,
    dimension: str,
    segment: str,
    counts: Counts,
    *,
    final: bool,
    revision: int,
    watermark_ms: int | None,
) -> dict[str, object]:
    """The record for a window given by name and epoch-ms bounds (MetricRecord shape)."""
    return {
        "window": window,
        "window_start": _utc(start_ms).isoformat(),
        "window_end": _utc(end_ms).isoformat(),
        "dimension": dimension,
        "segment": segment,
        "final": final,
        "revision": revision,
        "watermark": None if watermark_ms is None else _utc(watermark_ms).isoformat(),
        **published_counts(counts),
        **derived_metrics(counts, (end_ms - start_ms) / windows.DAY_MS),
    }


def encode_record(record: dict[str, object]) -> bytes:
    return orjson.dumps(record)
