"""The customer stage alone, in-process: CPU per event of `CustomerStage.apply_batch`.

Simulates events as `churn-stream bench` does (one customer per 10 events, a year of
history unless --days, 10 % churn, 2 % duplicates, 2 % out of order), decodes
them (not timed), splits them into ingest batches of `--batch` records and those into
`--partitions` internal partitions as the ingest stage does, and applies every customer
batch with a dict as store. Prints the CPU time of the applies per event, whether the
compiled modules ran, and a digest of the differences summed over the whole run: two
versions of the code that compute the same thing print the same digest, whatever the
batching. README (Benchmark → Measured here) quotes it.

    .venv/bin/python scripts/customer_stage_probe.py --events 300000
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import islice

import orjson

from stream import customers
from stream.contributions import DeltaKey
from stream.customers import CustomerStage, partition_for
from stream.decoding import decode_event
from stream.events import LifecycleEvent
from stream.formulas import Counts, add
from stream.simulator import SimulationConfig, generate_events

DIMENSIONS = ("plan", "region")


def simulated_events(
    count: int, customers_count: int, seed: int, days: int = 365
) -> list[LifecycleEvent]:
    config = SimulationConfig(
        customers=customers_count,
        start=datetime.now(UTC).date() - timedelta(days=days),
        days=days,
        seed=seed,
        churn_probability=0.1,
        duplicate_fraction=0.02,
        out_of_order_fraction=0.02,
    )
    return [
        decode_event(orjson.dumps(event), DIMENSIONS)
        for event in islice(generate_events(config), count)
    ]


def customer_batches(
    events: list[LifecycleEvent], batch: int, partitions: int
) -> list[tuple[list[LifecycleEvent], int]]:
    """(events, watermark) per internal partition per ingest batch, in processing order."""
    batches = []
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        watermark = max(event.time_ms for event in chunk)
        by_partition: dict[int, list[LifecycleEvent]] = {}
        for event in chunk:
            target = partition_for(event.customer_id, partitions)
            by_partition.setdefault(target, []).append(event)
        batches.extend((by_partition[target], watermark) for target in sorted(by_partition))
    return batches


def digest(totals: dict[DeltaKey, Counts]) -> str:
    kept = sorted((repr(key), counts) for key, counts in totals.items() if any(counts))
    return hashlib.sha256(orjson.dumps(kept)).hexdigest()[:16]


def run(arguments: argparse.Namespace) -> str:
    events = simulated_events(arguments.events, arguments.customers, arguments.seed, arguments.days)
    batches = customer_batches(events, arguments.batch, arguments.partitions)
    stage = CustomerStage({}, DIMENSIONS, None)
    totals: dict[DeltaKey, Counts] = {}
    cpu = 0.0
    for batch_events, watermark in batches:
        started = time.process_time()
        outcome = stage.apply_batch(batch_events, watermark)
        cpu += time.process_time() - started
        for key, counts in outcome.deltas.items():
            found = totals.get(key)
            totals[key] = counts if found is None else add(found, counts)
    compiled = not customers.__file__.endswith(".py")
    return (
        f"{len(events):,} events in {len(batches):,} customer batches: "
        f"{cpu:.2f} s of CPU, {cpu / max(len(events), 1) * 1e6:.2f} µs an event "
        f"({'compiled' if compiled else 'pure Python'}); digest {digest(totals)}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--customers", type=int, help="default: events / 10")
    parser.add_argument("--batch", type=int, default=5000, help="ingest batch (records)")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--days", type=int, default=365, help="history simulated (the bench sizes its own)"
    )
    arguments = parser.parse_args(argv)
    arguments.customers = arguments.customers or max(1, arguments.events // 10)
    print(run(arguments))


if __name__ == "__main__":
    main()
