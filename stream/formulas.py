"""Window counts and the metric formulas derived from them. Pure functions, no I/O.

A window's counts are a fixed-length tuple of integers (`COUNT_FIELDS` order): sums of
per-customer contributions, so they add and subtract exactly. Every ratio is computed
here and nowhere else.
"""

from __future__ import annotations

import operator
from typing import Final

from stream.events import MICROS_PER_UNIT

COUNT_FIELDS: Final = (
    "customers_start",
    "customers_end",
    "new_customers",
    "reactivated_customers",
    "churned_customers",
    "new_customers_lost",
    "mrr_start",
    "mrr_end",
    "churned_mrr",
    "expansion_mrr",
    "contraction_mrr",
    "retained_mrr",
    "new_mrr",
    "reactivation_mrr",
    "purchasing_customers",
    "purchases",
    "purchase_amount",
    "repeat_purchasers",
)
MONEY_FIELDS: Final = frozenset(
    {
        "mrr_start",
        "mrr_end",
        "churned_mrr",
        "expansion_mrr",
        "contraction_mrr",
        "retained_mrr",
        "new_mrr",
        "reactivation_mrr",
        "purchase_amount",
    }
)
WIDTH: Final = len(COUNT_FIELDS)
INDEX: Final = {name: position for position, name in enumerate(COUNT_FIELDS)}
DAYS_PER_MONTH: Final = 365 / 12
DAYS_PER_YEAR: Final = 365.0

Counts = tuple[int, ...]
ZERO: Final[Counts] = (0,) * WIDTH


def add(left: Counts, right: Counts) -> Counts:
    return tuple(map(operator.add, left, right))


def subtract(left: Counts, right: Counts) -> Counts:
    return tuple(map(operator.sub, left, right))


def negate(counts: Counts) -> Counts:
    return tuple(map(operator.neg, counts))


def ratio(numerator: int, denominator: int) -> float | None:
    return None if denominator == 0 else numerator / denominator


def rescale_churn(churn_rate: float | None, window_days: float, target_days: float) -> float | None:
    """Churn over `window_days` expressed over `target_days`: 1 - (1 - c)^(target/window)."""
    if churn_rate is None:
        return None
    return 1.0 - (1.0 - churn_rate) ** (target_days / window_days)


def derived_metrics(counts: Counts, window_days: float) -> dict[str, float | None]:
    c = dict(zip(COUNT_FIELDS, counts, strict=True))
    start = c["customers_start"]
    churn_rate = ratio(c["churned_customers"], start)
    monthly_churn = rescale_churn(churn_rate, window_days, DAYS_PER_MONTH)
    average_purchase = ratio(c["purchase_amount"], c["purchases"])
    if average_purchase is not None:
        average_purchase /= MICROS_PER_UNIT
    per_customer = ratio(c["purchases"], c["purchasing_customers"])
    monthly_frequency = (
        None if per_customer is None else per_customer * DAYS_PER_MONTH / window_days
    )
    lifetime_value = None
    if average_purchase is not None and monthly_frequency is not None and monthly_churn:
        lifetime_value = average_purchase * monthly_frequency / monthly_churn
    return {
        "churn_rate": churn_rate,
        "retention_rate": ratio(start - c["churned_customers"], start),
        "net_growth_rate": ratio(c["customers_end"] - start, start),
        "churn_rate_with_new": ratio(
            c["churned_customers"] + c["new_customers_lost"], start + c["new_customers"]
        ),
        "gross_mrr_churn_rate": ratio(c["churned_mrr"] + c["contraction_mrr"], c["mrr_start"]),
        "net_revenue_retention": ratio(c["retained_mrr"], c["mrr_start"]),
        "repeat_purchase_rate": ratio(c["repeat_purchasers"], c["purchasing_customers"]),
        "average_purchase_value": average_purchase,
        "purchase_frequency_monthly": monthly_frequency,
        "customer_lifetime_value": lifetime_value,
        "monthly_churn_rate": monthly_churn,
        "annual_churn_rate": rescale_churn(churn_rate, window_days, DAYS_PER_YEAR),
    }


def published_counts(counts: Counts) -> dict[str, int | float]:
    """Counts as published: money fields in currency units, the rest as integers."""
    return {
        name: value / MICROS_PER_UNIT if name in MONEY_FIELDS else value
        for name, value in zip(COUNT_FIELDS, counts, strict=True)
    }
