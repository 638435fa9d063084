"""`churn-stream bench`: throughput, latency, memory and recovery of the worker in one run.

Everything runs against one broker: the embedded one (Tansu on a free loopback port) unless
`--broker URL` names another. The phases, each optional:

1. production: N simulated events (several plans and regions, churn and reactivation,
   purchases, plan changes, duplicates, late deliveries) are produced to the input topic
   in aiokafka record batches. What the broker acknowledged is counted: Tansu's end
   offsets are wrong after multi-record batches.
2. limit: a bare aiokafka consumer (no group) reads the whole input topic with `getmany`
   and decodes every value with orjson.
3. worker: `churn-stream worker` process(es), timed from the first consumed event (the
   `churn_consumed_messages_total` counter of /metrics) until the output topic reflects
   all N events: applied + duplicate events reach N, per dimension the year records add
   up to every activated customer and every distinct purchase, and the output then stays
   quiet for a few emit intervals. The end is the timestamp of the last output record.
   `--verify` also compares the whole output with `churn-stream batch` (exact).
4. latency: load at `--rate` (fresh simulated customers, occurred_at = now) plus marker
   purchases of a dedicated segment; a marker's latency is its produce time to the
   timestamp of the first output record whose marker purchase count includes it.
5. memory: the worker's peak RSS (VmHWM of /proc/<pid>/status).
6. recovery: SIGTERM (or SIGKILL: `--recovery-after`), restart over the same data dir,
   time until a freshly produced marker is in the output.
7. one table on stdout and a JSON file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import SecretStr, ValidationError

from stream import native
from stream.broker import (
    EmbeddedBroker,
    _die_with_parent_hook,
    create_topics,
    free_port,
    standard_topics,
)
from stream.cli import add_settings_flags, settings_from, worker_command
from stream.events import compact_json
from stream.formulas import COUNT_FIELDS
from stream.kafka_config import aiokafka_options
from stream.settings import Settings
from stream.simulator import SimulationConfig, generate_events

DEFAULT_EVENTS: Final = 1_000_000
MAX_AUTO_CUSTOMERS: Final = 1_000_000
EVENTS_PER_CUSTOMER: Final = 10  # automatic customer count: events / this
DEFAULT_STORE: Final = "rocksdb://"
DEFAULT_DIMENSIONS: Final = ("plan", "region")
MARKER_SEGMENT: Final = "bench-marker"
MARKERS_PER_CUSTOMER: Final = 200  # keeps each marker customer's history short
PLACEHOLDER: Final = b"2000-01-01T00:00:00.000Z"  # occurred_at of a load template
EMISSION_FIELDS: Final = frozenset({"revision", "watermark", "final"})
PRODUCER_BATCH_BYTES: Final = 512 * 1024
PRODUCER_LINGER_MS: Final = 5
LIMIT_FETCH_BYTES: Final = 4 * 1024 * 1024
# Records the limit's consumer takes per getmany: Kafka's default max.poll.records. More
# at a time is slower in CPython: records that outlive a young collection are promoted
# and walked again by the older ones; here 100,000 a call read at 154,000-212,000
# events/s, 500 at 354,000-509,000, the same loop otherwise (README, Benchmark).
LIMIT_MAX_RECORDS: Final = 500
SAMPLE_CUSTOMERS: Final = 2000  # customers simulated to size the history
LOAD_TICK_S: Final = 0.005
SCRAPE_FAST_S: Final = 0.05
POLL_S: Final = 0.25
# A full scrape renders every segment gauge (four a second cost the worker ~7 % of its
# CPU); progress asks for these samples only.
PROGRESS_SCRAPE_S: Final = 1.0
PROGRESS_SAMPLES: Final = (
    "churn_consumed_messages_total",
    "churn_applied_events_total",
    "churn_duplicate_events_total",
)
PROGRESS_S: Final = 10.0
# The latency phase reads the workers' VmRSS about this many times over its load (at
# least every RSS_SAMPLE_MAX_S) to show whether memory still grows in its second half.
RSS_SAMPLES_PER_LOAD: Final = 60
RSS_SAMPLE_MIN_S: Final = 0.5
RSS_SAMPLE_MAX_S: Final = 10.0
STOP_TIMEOUT_S: Final = 60.0

Records = dict[str, dict[str, Any]]
Payload = tuple[int, bytes, bytes]  # (partition, key, value)


class BenchError(RuntimeError):
    """The benchmark could not complete a phase."""


def say(message: str) -> None:
    """Progress on stderr (the table and the JSON path go to stdout)."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- pure helpers


def rss_trend(samples: Sequence[tuple[float, float]]) -> dict[str, float | None]:
    """The second half of (seconds since the load started, MB) samples: the seconds it
    spans, its lowest and highest value and their least-squares slope in MB a minute (None
    with fewer than two). Over a short load the slope says little: the span goes with it."""
    if not samples:
        return {"seconds": None, "low_mb": None, "high_mb": None, "slope_mb_per_minute": None}
    middle = samples[-1][0] / 2
    late = [(t, mb) for t, mb in samples if t >= middle]
    values = [mb for _, mb in late]
    return {
        "seconds": _round(late[-1][0] - late[0][0], 1),
        "low_mb": _round(min(values), 1),
        "high_mb": _round(max(values), 1),
        "slope_mb_per_minute": _round(_slope(late) * 60, 2) if len(late) > 1 else None,
    }


def _slope(points: Sequence[tuple[float, float]]) -> float:
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), interpolating linearly between ranks; None if empty."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be between 0 and 100, got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> sample name -> value, summed over label sets."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    return totals


def sum_metrics(scrapes: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Add the samples of several workers' scrapes."""
    total: dict[str, float] = {}
    for scrape in scrapes:
        for name, value in scrape.items():
            total[name] = total.get(name, 0.0) + value
    return total


Buckets = dict[float, float]  # upper bound (le) -> cumulative count


def parse_histograms(text: str, name: str, label: str | None = None) -> dict[str, Buckets]:
    """The cumulative buckets of histogram `name` in Prometheus text, per value of `label`
    ("" for all when `label` is None; label sets that differ otherwise are added up)."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, Buckets] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != f"{name}_bucket":
                continue
            group = "" if label is None else sample.labels.get(label, "")
            buckets = found.setdefault(group, {})
            bound = float(sample.labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + float(sample.value)
    return found


def add_histograms(
    histograms: Iterable[Mapping[str, Buckets]],
    sign: float = 1.0,
    into: dict[str, Buckets] | None = None,
) -> dict[str, Buckets]:
    """Bucket by bucket: `into` plus (or, with sign -1, minus) every one of `histograms`."""
    total: dict[str, Buckets] = {} if into is None else into
    for histogram in histograms:
        for group, buckets in histogram.items():
            summed = total.setdefault(group, {})
            for bound, count in buckets.items():
                summed[bound] = summed.get(bound, 0.0) + sign * count
    return total


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile (0-1) of cumulative buckets, interpolated linearly within the bucket
    that holds it, as Prometheus's `histogram_quantile` does: from 0 for the first bucket;
    the highest finite bound when it falls in +Inf; None without observations."""
    if not 0 <= q <= 1:
        raise ValueError(f"quantile must be between 0 and 1, got {q}")
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def stage_summary(buckets: Mapping[float, float]) -> dict[str, float | None]:
    """Observations, p50 and p99 (seconds) of one histogram's buckets."""
    count = buckets.get(math.inf, 0.0)
    return {
        "count": count,
        "p50_seconds": _round(histogram_quantile(0.5, buckets)),
        "p99_seconds": _round(histogram_quantile(0.99, buckets)),
    }


def status_kb(status_text: str, name: str) -> int | None:
    """A `kB` field (VmHWM, VmRSS) of /proc/<pid>/status."""
    for line in status_text.splitlines():
        label, _, rest = line.partition(":")
        if label == name:
            return int(rest.split()[0])
    return None


def process_cpu_clock(pid: int) -> int:
    """The clock id of a process's CPU-time clock, as Linux's clock_getcpuclockid makes it."""
    # The kernel encodes it as the inverted pid shifted by 3, with 2 (CPUCLOCK_SCHED) in the
    # low bits; Python exposes clock_gettime but not clock_getcpuclockid.
    return (~pid << 3) | 2


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far, to the nanosecond (OSError once it is
    gone). /proc/<pid>/stat counts in clock ticks (10 ms): a short phase could read 0."""
    return time.clock_gettime(process_cpu_clock(pid))


def cpu_shares(
    before: Mapping[str, float | None], after: Mapping[str, float | None], seconds: float
) -> dict[str, float | None]:
    """Each process's CPU between two readings, as a share of one core."""
    shares: dict[str, float | None] = {}
    for name, end in after.items():
        start = before.get(name)
        if start is None or end is None or seconds <= 0:
            shares[name] = None
        else:
            shares[name] = round((end - start) / seconds, 3)
    return shares


def cpu_readings(pids: Mapping[str, int | None]) -> dict[str, float | None]:
    """CPU seconds so far of each named process (None: no pid, or gone)."""
    readings: dict[str, float | None] = {}
    for name, pid in pids.items():
        try:
            readings[name] = None if pid is None else cpu_seconds(pid)
        except OSError:
            readings[name] = None
    return readings


def crash_reason(log_text: str) -> str:
    """faust's "Crashed reason=" line, else the last line naming an error (shortened)."""
    lines = log_text.splitlines()
    for marker in ("Crashed reason=", "Error", "Exception"):
        for line in reversed(lines):
            if marker in line:
                return line.strip()[:300]
    return ""


def auto_customers(events: int) -> int:
    return max(1, min(MAX_AUTO_CUSTOMERS, events // EVENTS_PER_CUSTOMER))


def rfc3339_ms(wall: float) -> str:
    moment = datetime.fromtimestamp(wall, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def partition_of(key: bytes, partitions: int) -> int:
    return zlib.crc32(key) % partitions


def year_totals(latest: Records, dimension: str) -> tuple[int, int]:
    """(new customers, purchases) over every year record of `dimension`."""
    new = purchases = 0
    for record in latest.values():
        if record["window"] == "year" and record["dimension"] == dimension:
            new += int(record["new_customers"])
            purchases += int(record["purchases"])
    return new, purchases


def is_empty(record: Mapping[str, Any]) -> bool:
    return all(record.get(name) == 0 for name in COUNT_FIELDS)


def _same(left: object, right: object) -> bool:
    numbers = (int, float)
    if isinstance(left, numbers) and isinstance(right, numbers) and not isinstance(left, bool):
        return math.isclose(left, right, rel_tol=1e-12, abs_tol=1e-12)
    return left == right


def record_differences(actual: Records, expected: Records) -> list[str]:
    """Human-readable differences, ignoring emission fields; a key present on one side
    only must be all zeros."""
    problems: list[str] = []
    for key in sorted(actual.keys() | expected.keys()):
        left, right = actual.get(key), expected.get(key)
        if left is None or right is None:
            present = left if right is None else right
            if present is not None and not is_empty(present):
                problems.append(f"{key}: only in {'actual' if right is None else 'expected'}")
            continue
        for name in sorted((left.keys() | right.keys()) - EMISSION_FIELDS):
            if not _same(left.get(name), right.get(name)):
                problems.append(f"{key}.{name}: {left.get(name)!r} != {right.get(name)!r}")
    return problems


def output_digest(latest: Records) -> str:
    """SHA-256 of the metric content (no emission fields, no empty records), so that two
    runs over the same events can be compared by their JSON files."""
    digest = hashlib.sha256()
    for key in sorted(latest):
        record = latest[key]
        if is_empty(record):
            continue
        content = {name: value for name, value in record.items() if name not in EMISSION_FIELDS}
        digest.update(key.encode() + b"\0" + orjson.dumps(content, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


@dataclass(frozen=True)
class Expectation:
    """What the output must show once every pre-produced event is reflected."""

    events: int  # messages produced (all valid; duplicates included)
    customers: int  # distinct customer ids
    activated: int  # distinct customers with a subscribed or reactivated event
    purchases: int  # distinct purchase events


def reflects_all(latest: Records, expectation: Expectation, dimensions: Sequence[str]) -> bool:
    """Every dimension's year records count every activated customer and every purchase."""
    wanted = (expectation.activated, expectation.purchases)
    return all(year_totals(latest, dim) == wanted for dim in ("all", *dimensions))


class ExpectationCounter:
    """Builds an Expectation from the events as they are generated."""

    def __init__(self) -> None:
        self.events = 0
        self._customers: set[str] = set()
        self._activated: set[str] = set()
        self._purchases: set[tuple[str, str]] = set()

    def add(self, event: Mapping[str, Any]) -> None:
        self.events += 1
        customer = event["customer_id"]
        self._customers.add(customer)
        if event["type"] in ("subscribed", "reactivated"):
            self._activated.add(customer)
        elif event["type"] == "purchase":
            self._purchases.add((customer, event["event_id"]))

    def result(self) -> Expectation:
        return Expectation(
            self.events, len(self._customers), len(self._activated), len(self._purchases)
        )


@dataclass
class MarkerTracker:
    """Marker purchases: when each was produced and when the output first reflected it.

    The output reflects marker i once the marker segment's purchase count (summed over
    its day records) reaches i + 1; markers are produced to one partition, in order.
    """

    sent: list[float] = field(default_factory=list)
    reflected: list[float] = field(default_factory=list)

    def add(self, wall: float) -> int:
        self.sent.append(wall)
        return len(self.sent) - 1

    def observe(self, total: int, wall: float) -> None:
        reached = min(total, len(self.sent))
        while len(self.reflected) < reached:
            self.reflected.append(wall)

    @property
    def pending(self) -> int:
        return len(self.sent) - len(self.reflected)

    def latencies(
        self, start: int = 0, stop: int | None = None, now: float | None = None
    ) -> list[float]:
        """Latencies of markers start..stop; with `now`, a marker not reflected yet counts
        as `now - sent` (a lower bound), else it is left out."""
        result = []
        for index in range(start, len(self.sent) if stop is None else stop):
            if index < len(self.reflected):
                result.append(max(0.0, self.reflected[index] - self.sent[index]))
            elif now is not None:
                result.append(max(0.0, now - self.sent[index]))
        return result


def marker_event(index: int, wall: float, dimension: str) -> dict[str, Any]:
    return {
        "event_id": f"bench-marker-{index}",
        "type": "purchase",
        "customer_id": f"bench-marker-{index // MARKERS_PER_CUSTOMER:06d}",
        "occurred_at": rfc3339_ms(wall),
        "amount": 1,
        "attributes": {dimension: MARKER_SEGMENT},
    }


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Rate:
    events: int
    seconds: float
    # process -> its CPU over the phase, as a share of one core (where measured)
    cpu_shares: dict[str, float | None] = field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events_per_second, 1),
        }
        return shown | ({"cpu_shares": self.cpu_shares} if self.cpu_shares else {})


@dataclass
class Throughput:
    rate: Rate
    startup_seconds: float  # worker start -> first consumed event
    read_seconds: float | None  # first consumed -> all N consumed (from /metrics)
    applied_seconds: float | None  # first consumed -> applied + duplicates reach N
    output_records: int
    digest: str
    verified: bool | None = None
    differences: list[str] = field(default_factory=list)
    # process (worker-i, broker, bench) -> its CPU from the first consumed event until the
    # output reflected every event, as a share of one core
    cpu_shares: dict[str, float | None] = field(default_factory=dict)

    def as_json(self, limit: Rate | None) -> dict[str, Any]:
        ratio = None
        if limit is not None and limit.events_per_second > 0:
            ratio = round(self.rate.events_per_second / limit.events_per_second, 4)
        return {
            **self.rate.as_json(),
            "ratio_to_limit": ratio,
            "startup_seconds": _round(self.startup_seconds),
            "read_seconds": _round(self.read_seconds),
            "applied_seconds": _round(self.applied_seconds),
            "output_keys": self.output_records,
            "output_digest": self.digest,
            "verified": self.verified,
            "differences": self.differences[:20],
            "cpu_shares": self.cpu_shares,
        }


@dataclass
class Latency:
    offered_rate: float
    produced: int
    seconds: float
    latencies: list[float]
    unreflected: int
    rss_start_mb: float | None
    rss_end_mb: float | None
    # (seconds since the load started, the largest worker's VmRSS in MB)
    rss_samples: list[tuple[float, float]] = field(default_factory=list)
    # The workers' own histograms over the load (README, Prometheus metrics): stage -> summary
    stages: dict[str, dict[str, float | None]] = field(default_factory=dict)
    # process (worker-i, broker, bench) -> its CPU over the load, as a share of one core
    cpu_shares: dict[str, float | None] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        achieved = self.produced / self.seconds if self.seconds > 0 else 0.0
        return {
            "offered_rate": self.offered_rate,
            "achieved_rate": round(achieved, 1),
            "seconds": round(self.seconds, 3),
            "markers": len(self.latencies),
            "unreflected": self.unreflected,  # counted as lower bounds (drain time - sent)
            "lower_bound": self.unreflected > 0,
            "p50_seconds": _round(percentile(self.latencies, 50)),
            "p99_seconds": _round(percentile(self.latencies, 99)),
            "max_seconds": _round(max(self.latencies, default=None)),
            "rss_start_mb": _round(self.rss_start_mb, 1),
            "rss_end_mb": _round(self.rss_end_mb, 1),
            "rss_second_half": rss_trend(self.rss_samples),
            "rss_samples_mb": [[round(t, 1), round(mb, 1)] for t, mb in self.rss_samples],
            "stages": self.stages,
            "cpu_shares": self.cpu_shares,
            "samples_seconds": [round(value, 3) for value in self.latencies],
        }


@dataclass
class Memory:
    peak_rss_mb: list[float | None]
    rss_mb: list[float | None]

    def as_json(self) -> dict[str, Any]:
        peaks = [value for value in self.peak_rss_mb if value is not None]
        return {
            "peak_rss_mb": _round(max(peaks, default=None), 1),
            "peak_rss_mb_per_worker": [_round(value, 1) for value in self.peak_rss_mb],
            "rss_mb_per_worker": [_round(value, 1) for value in self.rss_mb],
        }


@dataclass
class Recovery:
    seconds: float
    stop_seconds: float
    exit_codes: list[int]
    metrics_up_seconds: float | None
    first_consumed_seconds: float | None
    peak_rss_mb: float | None
    after: str = "sigterm"
    local_tables: str = "kept"  # or "discarded" (restored from the changelogs)

    def as_json(self) -> dict[str, Any]:
        return {
            "after": self.after,
            "local_tables": self.local_tables,
            "seconds": round(self.seconds, 3),
            "stop_seconds": round(self.stop_seconds, 3),
            "exit_codes": self.exit_codes,
            "metrics_up_seconds": _round(self.metrics_up_seconds),
            "first_consumed_seconds": _round(self.first_consumed_seconds),
            "peak_rss_mb": _round(self.peak_rss_mb, 1),
        }


@dataclass
class BenchResult:
    setup: dict[str, Any]
    machine: dict[str, Any]
    production: Rate | None = None
    limit: Rate | None = None
    worker: Throughput | None = None
    latency: Latency | None = None
    memory: Memory | None = None
    recovery: Recovery | None = None
    error: str | None = None  # the phase that failed, if one did


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def machine_info() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "compiled_modules": list(native.compiled_sources()),
    }


def result_json(result: BenchResult) -> dict[str, Any]:
    worker = result.worker.as_json(result.limit) if result.worker else None
    return {
        "date": result.machine["date"],
        "machine": result.machine,
        "setup": result.setup,
        "production": result.production.as_json() if result.production else None,
        "limit": result.limit.as_json() if result.limit else None,
        "worker": worker,
        "latency": result.latency.as_json() if result.latency else None,
        "memory": result.memory.as_json() if result.memory else None,
        "recovery": result.recovery.as_json() if result.recovery else None,
        "error": result.error,
    }


def _rate_text(section: Mapping[str, Any] | None) -> str:
    if section is None:
        return "skipped"
    return f"{section['events_per_second']:>12,.0f} events/s  ({section['seconds']:.1f} s)"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _table_rows(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    setup, machine = data["setup"], data["machine"]
    worker, latency = data["worker"], data["latency"]
    memory, recovery = data["memory"], data["recovery"]
    rows = [
        ("machine", f"{machine['cores']} cores, Python {machine['python']}, {data['date']}"),
        ("compiled with mypyc", ", ".join(machine.get("compiled_modules", [])) or "none"),
        ("events (N)", f"{setup['events']:,}"),
        ("customers", f"{setup['customers']:,} ({setup['days']} days of history)"),
        (
            "partitions / workers / store",
            f"{setup['partitions']} / {setup['workers']} / {setup['store']}",
        ),
        ("production", _rate_text(data["production"])),
        ("limit (aiokafka + orjson)", _rate_text(data["limit"])),
    ]
    if data["limit"] and data["limit"].get("cpu_shares"):
        rows.append(("  CPU meanwhile", _cpu_text(data["limit"]["cpu_shares"])))
    rows.append(("worker end to end", _rate_text(worker)))
    if worker:
        split = (worker["read_seconds"], worker["applied_seconds"], worker["seconds"])
        rows.append(("  read / applied / in output", " / ".join(map(_seconds, split))))
        if worker.get("cpu_shares"):
            rows.append(("  CPU meanwhile", _cpu_text(worker["cpu_shares"])))
    ratio = worker and worker["ratio_to_limit"]
    rows.append(("worker / limit", "-" if not ratio else f"{ratio * 100:.1f} %"))
    if worker and worker["verified"] is not None:
        verdict = "exact" if worker["verified"] else f"{len(worker['differences'])}+ differences"
        rows.append(("verify (vs churn-stream batch)", verdict))
    if latency:
        bound = ">= " if latency["lower_bound"] else ""
        rows.append(
            (
                f"latency p50 / p99 @ {latency['offered_rate']:,.0f}/s",
                f"{bound}{_seconds(latency['p50_seconds'])} / "
                f"{bound}{_seconds(latency['p99_seconds'])}  "
                f"(achieved {latency['achieved_rate']:,.0f}/s, {latency['markers']} markers"
                + (f", {latency['unreflected']} unreflected)" if latency["unreflected"] else ")"),
            )
        )
        if latency.get("stages"):
            rows.append(("  by stage p50 / p99 (histograms)", _stages_text(latency["stages"])))
    else:
        rows.append(("latency", "skipped"))
    peak = memory and memory["peak_rss_mb"]
    rows.append(("peak RSS (worker)", "-" if peak is None else f"{peak:,.0f} MB"))
    if latency and latency["rss_start_mb"] is not None and latency["rss_end_mb"] is not None:
        growth = f"{latency['rss_start_mb']:,.0f} -> {latency['rss_end_mb']:,.0f} MB"
        rows.append(("  RSS over the latency load", growth))
    trend = latency and latency.get("rss_second_half")
    if trend and trend["slope_mb_per_minute"] is not None:
        rows.append(
            (
                "  RSS over its second half",
                f"{trend['low_mb']:,.0f}-{trend['high_mb']:,.0f} MB, "
                f"{trend['slope_mb_per_minute']:+.1f} MB a minute over {trend['seconds']:,.0f} s "
                f"({len(latency['rss_samples_mb'])} samples in all)",
            )
        )
    if latency and latency.get("cpu_shares"):
        rows.append(("  CPU over the latency load", _cpu_text(latency["cpu_shares"])))
    if recovery is None:
        rows.append(("recovery (restart -> processing)", "skipped"))
    else:
        detail = f"after {recovery['after'].upper()}, local tables {recovery['local_tables']}"
        rows.append(
            ("recovery (restart -> processing)", f"{_seconds(recovery['seconds'])} ({detail})")
        )
    if data.get("error"):
        rows.append(("FAILED", data["error"].splitlines()[0][:160]))
    return rows


def _cpu_text(shares: Mapping[str, float | None]) -> str:
    parts = [
        f"{name} {'-' if share is None else f'{share * 100:.0f} %'}"
        for name, share in shares.items()
    ]
    return ", ".join(parts) + " of a core"


def _stages_text(stages: Mapping[str, Mapping[str, Any]]) -> str:
    return ", ".join(
        f"{stage} {_seconds(summary['p50_seconds'])} / {_seconds(summary['p99_seconds'])}"
        for stage, summary in stages.items()
    )


def format_table(data: Mapping[str, Any]) -> str:
    """The one table printed at the end, from the JSON document."""
    rows = _table_rows(data)
    width = max(len(label) for label, _ in rows)
    line = "-" * (width + 2 + max(len(value) for _, value in rows))
    body = [f"{label:<{width}}  {value}" for label, value in rows]
    return "\n".join(["churn-stream bench", line, *body, line])


def default_json_path(now: datetime | None = None) -> Path:
    moment = now or datetime.now(UTC)
    return Path("bench-results") / f"bench-{moment.strftime('%Y%m%dT%H%M%SZ')}.json"


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")


# --------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Plan:
    """What to run (from the command line)."""

    events: int
    customers: int | None
    days: int | None
    seed: int
    churn: float
    duplicates: float
    out_of_order: float
    workers: int
    rate: float
    latency_seconds: float
    markers_per_second: float
    drain_seconds: float
    limit: bool
    recovery: bool
    verify: bool
    quiet_seconds: float | None
    timeout: float
    json_path: Path
    work_dir: Path | None
    recovery_after: str = "sigterm"


@dataclass
class Workload:
    payloads: list[Payload]
    expectation: Expectation
    days: int
    customers: int  # configured


def simulation(plan: Plan, customers: int, days: int, seed: int) -> SimulationConfig:
    start = datetime.now(UTC).date() - timedelta(days=days)
    return SimulationConfig(
        customers=customers,
        start=max(start, date(2000, 1, 2)),
        days=days,
        seed=seed,
        churn_probability=plan.churn,
        duplicate_fraction=plan.duplicates,
        out_of_order_fraction=plan.out_of_order,
    )


def size_days(plan: Plan, events: int, customers: int) -> int:
    """Days of history so that `customers` produce at least `events` events (sampled)."""
    wanted = events / customers * 1.02  # a small margin: the cut drops late arrivals
    days = max(1, math.ceil((wanted - 1.0) / 0.35))
    sample = min(customers, SAMPLE_CUSTOMERS)
    for _ in range(4):
        config = simulation(plan, sample, days, plan.seed)
        per_customer = sum(1 for _ in generate_events(config)) / sample
        if per_customer >= wanted:
            return days
        grown = math.ceil(days * (wanted - 1.0) / max(per_customer - 1.0, 0.05))
        days = max(days + 1, grown)
    return days


def build_workload(plan: Plan, partitions: int) -> Workload:
    """N events in delivery order, serialized, with what the output must show for them."""
    customers = plan.customers or auto_customers(plan.events)
    days = plan.days or size_days(plan, plan.events, customers)
    while True:
        counter = ExpectationCounter()
        payloads: list[Payload] = []
        config = simulation(plan, customers, days, plan.seed)
        for event in islice(generate_events(config), plan.events):
            counter.add(event)
            key = event["customer_id"].encode()
            payloads.append((partition_of(key, partitions), key, compact_json(event)))
        if len(payloads) >= plan.events or plan.days:
            return Workload(payloads, counter.result(), days, customers)
        days = math.ceil(days * 1.1) + 1  # the sample under-estimated: more history


def build_load(plan: Plan, partitions: int, count: int) -> list[Payload]:
    """Templates for the latency phase: fresh customers ("load-" ids), occurred_at to be
    filled in with the wall clock at produce time."""
    if count <= 0:
        return []
    customers = max(1, min(MAX_AUTO_CUSTOMERS, count // EVENTS_PER_CUSTOMER))
    days = size_days(plan, count, customers)
    config = simulation(plan, customers, days, plan.seed + 1)
    placeholder = PLACEHOLDER.decode()
    templates: list[Payload] = []
    for event in islice(_cycle_events(config), count):
        event = {
            **event,
            "event_id": f"load-{event['event_id']}",
            "customer_id": f"load-{event['customer_id']}",
            "occurred_at": placeholder,
        }
        key = event["customer_id"].encode()
        templates.append((partition_of(key, partitions), key, compact_json(event)))
    return templates


def _cycle_events(config: SimulationConfig) -> Iterator[dict[str, Any]]:
    """The simulated events, then again with a new seed and customer ids, forever."""
    round_number = 0
    while True:
        for event in generate_events(config):
            if round_number:
                event["customer_id"] = f"r{round_number}-{event['customer_id']}"
                event["event_id"] = f"r{round_number}-{event['event_id']}"
            yield event
        round_number += 1


# --------------------------------------------------------------------------- production


class Tally:
    """Records acknowledged per submitted batch."""

    def __init__(self) -> None:
        self.acked = 0
        self.futures: list[asyncio.Future[Any]] = []

    def track(self, future: asyncio.Future[Any], records: int) -> None:
        def done(settled: asyncio.Future[Any]) -> None:
            if not settled.cancelled() and settled.exception() is None:
                self.acked += records

        future.add_done_callback(done)
        self.futures.append(future)

    async def settle(self) -> None:
        futures, self.futures = self.futures, []
        results = await asyncio.gather(*futures, return_exceptions=True)
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            raise BenchError(f"{len(failures)} record batches were not acknowledged: {failures[0]}")


def make_producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        linger_ms=PRODUCER_LINGER_MS,
        max_batch_size=PRODUCER_BATCH_BYTES,
        **aiokafka_options(settings),
    )


async def _submit(
    producer: AIOKafkaProducer, topic: str, partition: int, builder: Any, tally: Tally
) -> None:
    records = builder.record_count()
    future = await producer.send_batch(builder, topic, partition=partition)
    tally.track(future, records)


async def send_records(
    producer: AIOKafkaProducer,
    topic: str,
    records: Iterable[Payload],
    tally: Tally,
    stamp: bytes | None = None,
) -> None:
    """Send records as one batch per partition at a time (full batches go out at once).
    With `stamp`, the placeholder occurred_at of each value is replaced by it."""
    builders: dict[int, Any] = {}
    for partition, key, value in records:
        payload = value.replace(PLACEHOLDER, stamp, 1) if stamp is not None else value
        builder = builders.get(partition)
        if builder is None:
            builder = builders[partition] = producer.create_batch()
        if builder.append(key=key, value=payload, timestamp=None) is None:
            await _submit(producer, topic, partition, builder, tally)
            builder = builders[partition] = producer.create_batch()
            builder.append(key=key, value=payload, timestamp=None)
    for partition, builder in builders.items():
        if builder.record_count():
            await _submit(producer, topic, partition, builder, tally)


async def produce_workload(settings: Settings, payloads: Sequence[Payload]) -> Rate:
    producer = make_producer(settings)
    await producer.start()
    tally = Tally()
    try:
        started = time.monotonic()
        await send_records(producer, settings.input_topic, payloads, tally)
        await tally.settle()
        seconds = time.monotonic() - started
    finally:
        await producer.stop()
    if tally.acked != len(payloads):
        raise BenchError(f"only {tally.acked} of {len(payloads)} events were acknowledged")
    return Rate(tally.acked, seconds)


# --------------------------------------------------------------------------- the limit


async def measure_limit(
    settings: Settings, expected: int, timeout: float, broker_pid: int | None = None
) -> Rate:
    """A bare aiokafka consumer (no group): read the whole input topic, decode each value;
    with the CPU shares of this process (the consumer) and the embedded broker meanwhile."""
    pids = {"bench": os.getpid(), "broker": broker_pid}
    before = cpu_readings(pids)
    rate = await consume_topic(settings, expected, timeout)
    shares = cpu_shares(before, cpu_readings(pids), rate.seconds)
    return Rate(rate.events, rate.seconds, shares)


async def consume_topic(
    settings: Settings, expected: int, timeout: float, max_records: int = LIMIT_MAX_RECORDS
) -> Rate:
    """Read and decode the whole input topic with a consumer of its own (no group)."""
    consumer = AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=LIMIT_FETCH_BYTES,
        **aiokafka_options(settings),
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(settings.input_topic, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        return await read_all(consumer, expected, timeout, max_records)
    finally:
        await consumer.stop()


async def read_all(
    consumer: AIOKafkaConsumer,
    expected: int,
    timeout: float,
    max_records: int = LIMIT_MAX_RECORDS,
) -> Rate:
    loads = orjson.loads
    count = 0
    started = time.monotonic()
    while count < expected:
        if time.monotonic() - started > timeout:
            raise BenchError(f"limit: read {count} of {expected} events in {timeout:.0f}s")
        batches = await consumer.getmany(timeout_ms=1000, max_records=max_records)
        for messages in batches.values():
            for message in messages:
                loads(message.value)
            count += len(messages)
    return Rate(count, time.monotonic() - started)


# --------------------------------------------------------------------------- worker processes


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment of a worker child: this one without CHURN_*, plus `settings`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHURN_")}
    for name, value in settings.model_dump(exclude_none=True).items():
        if isinstance(value, tuple):
            value = ",".join(value)
        elif isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"CHURN_{name.upper()}"] = str(value)
    return env


START_LINE: Final = b"===== bench: worker started =====\n"


class WorkerProcess:
    """`churn-stream worker` as a child process, its log in a file."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.started_wall = 0.0
        self.peak_rss_mb: float | None = None  # last VmHWM read (kept after exit)

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.settings.data_dir.parent.mkdir(parents=True, exist_ok=True)  # faust: no parents
        with self.log_path.open("ab") as log:
            log.write(START_LINE)
            log.flush()
            self.started_wall = time.time()
            self.process = subprocess.Popen(
                worker_command(),
                env=settings_env(self.settings),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent_hook(),  # no orphan worker if the bench is killed
            )
        return self

    def restarted(self) -> WorkerProcess:
        """A new (unstarted) worker over the same state, with a fresh metrics port."""
        settings = self.settings.model_copy(update={"metrics_port": free_port()})
        return WorkerProcess(settings, self.log_path)

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BenchError("the worker was not started")
        return self.process.pid

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            tail = self.log_tail()
            print(tail, file=sys.stderr)
            raise BenchError(
                f"worker exited with {code}: {crash_reason(tail)} (log {self.log_path})"
            )

    def scrape(self) -> dict[str, float]:
        return parse_metrics(self.scrape_text(PROGRESS_SAMPLES))

    def scrape_text(self, names: Sequence[str] = ()) -> str:
        """The worker's /metrics; with `names`, only those samples."""
        query = urllib.parse.urlencode([("name[]", name) for name in names])
        url = f"http://{self.settings.metrics_host}:{self.settings.metrics_port}/metrics"
        with urllib.request.urlopen(f"{url}?{query}" if query else url, timeout=10) as response:
            return str(response.read().decode())

    async def scrape_async(self) -> dict[str, float] | None:
        """The worker's progress counters, or None while it does not answer yet."""
        self.check_alive()
        try:
            return await asyncio.to_thread(self.scrape)
        except OSError:
            return None

    def status_mb(self, name: str) -> float | None:
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        kb = status_kb(text, name)
        return None if kb is None else kb / 1024

    def read_peak(self) -> float | None:
        peak = self.status_mb("VmHWM")
        if peak is not None:
            self.peak_rss_mb = peak
        return self.peak_rss_mb

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        if self.process is None:
            return 0
        self.read_peak()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> int:
        if self.process is None:
            return 0
        self.read_peak()
        self.process.kill()
        return self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


async def scrape_all(workers: Sequence[WorkerProcess]) -> dict[str, float] | None:
    scrapes = [await worker.scrape_async() for worker in workers]
    if any(scrape is None for scrape in scrapes):
        return None
    return sum_metrics(scrape for scrape in scrapes if scrape is not None)


async def first_consumption(
    workers: Sequence[WorkerProcess], timeout: float
) -> tuple[float, float | None]:
    """(wall time of the first consumed message, wall time /metrics first answered);
    the consumption instant is the midpoint between the last scrape that showed none
    and the first that showed some."""
    deadline = time.monotonic() + timeout
    previous = time.time()
    metrics_up: float | None = None
    while time.monotonic() < deadline:
        scraped_at = time.time()
        totals = await scrape_all(workers)
        if totals is not None:
            metrics_up = metrics_up or scraped_at
            if totals.get("churn_consumed_messages_total", 0.0) > 0:
                return (previous + scraped_at) / 2, metrics_up
        previous = scraped_at
        await asyncio.sleep(SCRAPE_FAST_S)
    raise BenchError(f"the worker consumed nothing within {timeout:.0f}s")


# --------------------------------------------------------------------------- the output


class OutputFollower:
    """Follows the output topic (no group): the latest record per key, the timestamp of
    the last record, and the marker segment's purchase count for the MarkerTracker."""

    def __init__(self, settings: Settings, marker_dimension: str, tracker: MarkerTracker) -> None:
        self._settings = settings
        self._marker_dimension = marker_dimension
        self._tracker = tracker
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._marker_days: dict[str, int] = {}
        self.latest: Records = {}
        self.messages = 0
        self.last_record_wall: float | None = None  # record timestamp (the worker's clock)
        self.last_receive = time.monotonic()

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            self._settings.output_topic,
            group_id=None,
            auto_offset_reset="earliest",
            **aiokafka_options(self._settings),
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    def check(self) -> None:
        """Raise if the background reader failed."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            error = self._task.exception()
            if error is not None:
                raise BenchError(f"reading the output topic failed: {error!r}") from error

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            for messages in batches.values():
                for message in messages:
                    self._take(message.key, message.value, message.timestamp / 1000)

    def _take(self, key: bytes | None, value: bytes | None, wall: float) -> None:
        if key is None or value is None:
            return
        record = orjson.loads(value)
        name = key.decode()
        self.latest[name] = record
        self.messages += 1
        self.last_record_wall = wall
        self.last_receive = time.monotonic()
        if (
            record.get("window") == "day"
            and record.get("dimension") == self._marker_dimension
            and record.get("segment") == MARKER_SEGMENT
        ):
            self._marker_days[name] = int(record["purchases"])
            self._tracker.observe(sum(self._marker_days.values()), wall)


# --------------------------------------------------------------------------- phases


@dataclass
class Bench:
    """The moving parts of one run."""

    plan: Plan
    settings: Settings  # the first worker's
    workers: list[WorkerProcess]
    follower: OutputFollower
    tracker: MarkerTracker
    producer: AIOKafkaProducer
    marker_dimension: str
    broker_pid: int | None = None  # the embedded broker's

    def check(self) -> None:
        self.follower.check()
        for worker in self.workers:
            worker.check_alive()

    def cpu_readings(self) -> dict[str, float | None]:
        """CPU seconds so far of each worker, the embedded broker and this process."""
        pids: dict[str, int | None] = {f"worker-{i}": w.pid for i, w in enumerate(self.workers)}
        return cpu_readings(pids | {"broker": self.broker_pid, "bench": os.getpid()})

    async def send_marker(self) -> int:
        wall = time.time()
        index = self.tracker.add(wall)
        value = orjson.dumps(marker_event(index, wall, self.marker_dimension))
        await self.producer.send(self.settings.input_topic, value, key=b"bench-marker", partition=0)
        return index

    async def wait_reflected(self, index: int, timeout: float) -> float:
        """Wall time (record timestamp) at which marker `index` was reflected."""
        deadline = time.monotonic() + timeout
        while len(self.tracker.reflected) <= index:
            self.check()
            if time.monotonic() > deadline:
                raise BenchError(f"marker {index} not in the output within {timeout:.0f}s")
            await asyncio.sleep(0.02)
        return self.tracker.reflected[index]


@dataclass
class Progress:
    first_consumed: float
    read_done: float | None = None
    applied_done: float | None = None
    reported: float = field(default_factory=time.monotonic)

    def update(self, totals: Mapping[str, float], events: int) -> None:
        now = time.time()
        consumed = totals.get("churn_consumed_messages_total", 0.0)
        applied = totals.get("churn_applied_events_total", 0.0) + totals.get(
            "churn_duplicate_events_total", 0.0
        )
        if self.read_done is None and consumed >= events:
            self.read_done = now
        if self.applied_done is None and applied >= events:
            self.applied_done = now
        if time.monotonic() - self.reported >= PROGRESS_S:
            self.reported = time.monotonic()
            elapsed = now - self.first_consumed
            say(
                f"worker: {consumed:,.0f} read, {applied:,.0f} applied of {events:,} "
                f"after {elapsed:.0f}s ({applied / max(elapsed, 1e-9):,.0f} events/s)"
            )


def quiet_seconds(plan: Plan, settings: Settings) -> float:
    if plan.quiet_seconds is not None:
        return plan.quiet_seconds
    return max(2.0, 3 * settings.emit_interval_seconds)


async def measure_throughput(bench: Bench, workload: Workload) -> Throughput:
    plan, expectation = bench.plan, workload.expectation
    dimensions = bench.settings.dimensions
    first, _ = await first_consumption(bench.workers, plan.timeout)
    startup = first - min(worker.started_wall for worker in bench.workers)
    say(f"worker: first event consumed {startup:.1f}s after start")
    progress = Progress(first)
    quiet = quiet_seconds(plan, bench.settings)
    deadline = time.monotonic() + plan.timeout
    cpu_start, cpu_start_wall = bench.cpu_readings(), time.time()
    cpu_end: dict[str, float | None] = {}
    cpu_end_wall = cpu_start_wall
    complete = False
    while not (complete and time.monotonic() - bench.follower.last_receive >= quiet):
        bench.check()
        if time.monotonic() > deadline:
            raise BenchError(_incomplete(bench, expectation, plan.timeout))
        totals = await scrape_all(bench.workers) or {}
        progress.update(totals, expectation.events)
        if not complete:
            cpu_end, cpu_end_wall = bench.cpu_readings(), time.time()
        complete = progress.applied_done is not None and reflects_all(
            bench.follower.latest, expectation, dimensions
        )
        await asyncio.sleep(PROGRESS_SCRAPE_S)
    end = bench.follower.last_record_wall or time.time()
    return Throughput(
        rate=Rate(expectation.events, end - first),
        startup_seconds=startup,
        read_seconds=None if progress.read_done is None else progress.read_done - first,
        applied_seconds=None if progress.applied_done is None else progress.applied_done - first,
        output_records=len(bench.follower.latest),
        digest=output_digest(bench.follower.latest),
        cpu_shares=cpu_shares(cpu_start, cpu_end, cpu_end_wall - cpu_start_wall),
    )


def _incomplete(bench: Bench, expectation: Expectation, timeout: float) -> str:
    seen = {d: year_totals(bench.follower.latest, d) for d in ("all", *bench.settings.dimensions)}
    return (
        f"the output did not reflect all {expectation.events} events within {timeout:.0f}s: "
        f"(new customers, purchases) per dimension {seen}, wanted "
        f"{(expectation.activated, expectation.purchases)}"
    )


def verify(settings: Settings, output: Records, workload: Workload) -> list[str]:
    """Differences between `output` and `churn-stream batch` over the same events."""
    from stream.batch import compute_records
    from stream.decoding import decode_event

    events = [decode_event(value, settings.dimensions) for _, _, value in workload.payloads]
    expected = {
        f"{r['window']}/{r['dimension']}/{r['segment']}/{r['window_start']}": r
        for r in compute_records(
            events,
            settings.dimensions,
            inactivity_days=settings.inactivity_days,
            grace_seconds=settings.grace_seconds,
            max_segments=settings.max_segments,
        )
    }
    return record_differences(output, expected)


async def wait_caught_up(bench: Bench, timeout: float) -> None:
    """A marker goes through the whole pipeline: the worker is up and caught up."""
    index = await bench.send_marker()
    await bench.wait_reflected(index, timeout)


def _max_rss(workers: Sequence[WorkerProcess]) -> float | None:
    values = [value for worker in workers if (value := worker.status_mb("VmRSS")) is not None]
    return max(values, default=None)


def rss_sample_interval(load_seconds: float) -> float:
    wanted = load_seconds / RSS_SAMPLES_PER_LOAD
    return min(RSS_SAMPLE_MAX_S, max(RSS_SAMPLE_MIN_S, wanted))


def _add_rss_sample(
    workers: Sequence[WorkerProcess], started: float, into: list[tuple[float, float]]
) -> None:
    if (value := _max_rss(workers)) is not None:
        into.append((time.monotonic() - started, value))


async def sample_rss(
    workers: Sequence[WorkerProcess],
    started: float,
    interval: float,
    into: list[tuple[float, float]],
) -> None:
    """Append (seconds since `started`, the largest worker's VmRSS) every `interval` until
    cancelled."""
    while True:
        _add_rss_sample(workers, started, into)
        await asyncio.sleep(interval)


async def offer_load(bench: Bench, templates: Sequence[Payload]) -> tuple[int, float]:
    """Produce `templates` at the planned rate with occurred_at = now, and one marker
    every 1 / markers_per_second; returns (events produced, seconds)."""
    plan = bench.plan
    tally = Tally()
    interval = 1.0 / plan.markers_per_second
    started = time.monotonic()
    next_marker = started
    sent = 0
    while (now := time.monotonic()) - started < plan.latency_seconds:
        due = min(int(plan.rate * (now - started)), len(templates))
        if due > sent:
            stamp = rfc3339_ms(time.time()).encode()
            await send_records(
                bench.producer, bench.settings.input_topic, templates[sent:due], tally, stamp
            )
            sent = due
        if now >= next_marker:
            await bench.send_marker()
            next_marker += interval
        bench.check()
        await asyncio.sleep(LOAD_TICK_S)
    seconds = time.monotonic() - started
    await tally.settle()
    return sent, seconds


_STAGE_ORDER: Final = {
    stage: i for i, stage in enumerate(("ingest", "customers", "segments", "flush"))
}


async def latency_histograms(workers: Sequence[WorkerProcess]) -> dict[str, Buckets]:
    """The workers' stage latency and flush histograms, added up (flush: "flush")."""
    total: dict[str, Buckets] = {}
    for worker in workers:
        worker.check_alive()
        text = await asyncio.to_thread(worker.scrape_text)
        add_histograms([parse_histograms(text, "churn_stage_latency_seconds", "stage")], into=total)
        flushes = parse_histograms(text, "churn_flush_seconds")
        add_histograms([{"flush": flushes.get("", {})}], into=total)
    return total


def stage_summaries(
    before: Mapping[str, Buckets], after: Mapping[str, Buckets]
) -> dict[str, dict[str, float | None]]:
    """Per stage, what was observed between two sums of the workers' histograms."""
    observed = add_histograms([before], sign=-1.0, into=add_histograms([after]))
    ordered = sorted(
        observed, key=lambda stage: (_STAGE_ORDER.get(stage, len(_STAGE_ORDER)), stage)
    )
    return {stage: stage_summary(observed[stage]) for stage in ordered}


async def measure_latency(bench: Bench, templates: Sequence[Payload]) -> Latency:
    plan = bench.plan
    await wait_caught_up(bench, plan.timeout)
    histograms_before = await latency_histograms(bench.workers)
    first = len(bench.tracker.sent)
    rss_start = _max_rss(bench.workers)
    cpu_start = bench.cpu_readings()
    say(f"latency: offering {plan.rate:,.0f} events/s for {plan.latency_seconds:.0f}s")
    rss_samples: list[tuple[float, float]] = []
    interval = rss_sample_interval(plan.latency_seconds)
    started = time.monotonic()
    sampler = asyncio.create_task(sample_rss(bench.workers, started, interval, rss_samples))
    try:
        produced, seconds = await offer_load(bench, templates)
    finally:
        sampler.cancel()
    cpu = cpu_shares(cpu_start, bench.cpu_readings(), seconds)
    rss_end = _max_rss(bench.workers)
    _add_rss_sample(bench.workers, started, rss_samples)
    deadline = time.monotonic() + plan.drain_seconds
    while bench.tracker.pending and time.monotonic() < deadline:
        bench.check()
        await asyncio.sleep(POLL_S)
    if bench.tracker.pending:
        say(f"latency: {bench.tracker.pending} markers still unreflected (worker saturated)")
    stages = stage_summaries(histograms_before, await latency_histograms(bench.workers))
    return Latency(
        offered_rate=plan.rate,
        produced=produced,
        seconds=seconds,
        latencies=bench.tracker.latencies(first, len(bench.tracker.sent), now=time.time()),
        unreflected=bench.tracker.pending,
        rss_start_mb=rss_start,
        rss_end_mb=rss_end,
        rss_samples=rss_samples,
        stages=stages,
        cpu_shares=cpu,
    )


def memory_of(workers: Sequence[WorkerProcess]) -> Memory:
    return Memory(
        peak_rss_mb=[worker.read_peak() for worker in workers],
        rss_mb=[worker.status_mb("VmRSS") for worker in workers],
    )


async def measure_recovery(bench: Bench) -> Recovery:
    """SIGTERM (or SIGKILL) every worker, restart them over the same data dirs, time until
    a marker produced right after the restart is in the output."""
    plan = bench.plan
    say("recovery: waiting until the worker has caught up")
    await wait_caught_up(bench, plan.timeout)
    say(f"recovery: {plan.recovery_after} and restart over the worker's state")
    stopping = time.monotonic()
    halt = "kill" if plan.recovery_after == "sigkill" else "stop"
    codes = await asyncio.gather(*(asyncio.to_thread(getattr(w, halt)) for w in bench.workers))
    stop_seconds = time.monotonic() - stopping
    bench.workers = [worker.restarted() for worker in bench.workers]
    restart = time.time()
    for worker in bench.workers:
        worker.start()
    index = await bench.send_marker()
    consumed, metrics_up = await first_consumption(bench.workers, plan.timeout)
    reflected = await bench.wait_reflected(index, plan.timeout)
    return Recovery(
        seconds=reflected - restart,
        stop_seconds=stop_seconds,
        exit_codes=list(codes),
        metrics_up_seconds=None if metrics_up is None else metrics_up - restart,
        first_consumed_seconds=consumed - restart,
        peak_rss_mb=max((w.read_peak() or 0.0 for w in bench.workers), default=None),
        after=plan.recovery_after,
        local_tables=_local_tables(bench.workers),
    )


def _local_tables(workers: list[WorkerProcess]) -> str:
    """What the restarted workers did with their local tables (from their logs)."""
    logs = [worker.log_path.read_text(errors="replace") for worker in workers]
    last_starts = [text[text.rfind(START_LINE.decode()) :] for text in logs]
    discarded = any("discarding the local tables" in text for text in last_starts)
    return "discarded" if discarded else "kept"


# --------------------------------------------------------------------------- the run


def worker_settings(base: Settings, run_id: str, work_dir: Path, workers: int) -> list[Settings]:
    """One Settings per worker: one group (app id), own metrics port and data dir."""
    shared = {
        "app_id": f"bench-{run_id}",
        "input_topic": f"bench-{run_id}-events",
        "output_topic": f"bench-{run_id}-metrics",
        "dlq_topic": f"bench-{run_id}-dlq",
    }
    return [
        base.model_copy(
            update={
                **shared,
                "metrics_port": free_port(),
                "data_dir": work_dir / f"worker-{i}",
                "group_instance_id": _numbered(base.group_instance_id, i),
            }
        )
        for i in range(workers)
    ]


def _numbered(group_instance_id: str | None, worker: int) -> str | None:
    """Each worker's own static member name (`--group-instance-id NAME`: NAME-0, NAME-1…)."""
    return None if group_instance_id is None else f"{group_instance_id}-{worker}"


def describe_setup(
    plan: Plan, settings: Settings, workload: Workload | None, broker: str
) -> dict[str, Any]:
    expectation = workload.expectation if workload else None
    return {
        "events": expectation.events if expectation else 0,
        "customers": expectation.customers if expectation else 0,
        "customers_configured": workload.customers if workload else 0,
        "activated_customers": expectation.activated if expectation else 0,
        "distinct_purchases": expectation.purchases if expectation else 0,
        "days": workload.days if workload else 0,
        "duplicates": plan.duplicates,
        "out_of_order": plan.out_of_order,
        "churn_probability": plan.churn,
        "seed": plan.seed,
        "partitions": settings.partitions,
        "workers": plan.workers,
        "store": settings.store,
        "dimensions": list(settings.dimensions),
        "emit_interval_seconds": settings.emit_interval_seconds,
        "batch_max_records": settings.batch_max_records,
        "limit_max_records": LIMIT_MAX_RECORDS,
        "session_timeout_seconds": settings.session_timeout_seconds,
        "rate": plan.rate,
        "latency_seconds": plan.latency_seconds,
        "broker": broker,
        "worker_settings": worker_settings_json(settings),
    }


def worker_settings_json(settings: Settings) -> dict[str, Any]:
    """Every worker setting except secrets and the per-run names."""
    skip = {"broker", "app_id", "input_topic", "output_topic", "dlq_topic", "metrics_port"}
    return {
        name: value
        for name, value in settings.model_dump(mode="json").items()
        if name not in skip and "password" not in name
    }


async def run_phases(
    plan: Plan,
    all_settings: list[Settings],
    workload: Workload | None,
    templates: list[Payload],
    result: BenchResult,
    broker_pid: int | None = None,
) -> None:
    settings = all_settings[0]
    await create_topics(settings.bootstrap_servers, standard_topics(settings))
    if workload is not None:
        say(f"producing {len(workload.payloads):,} events")
        result.production = await produce_workload(settings, workload.payloads)
        say(f"produced at {result.production.events_per_second:,.0f} events/s")
    if workload is not None and plan.limit:
        result.limit = await measure_limit(
            settings, workload.expectation.events, plan.timeout, broker_pid
        )
        say(f"limit: {result.limit.events_per_second:,.0f} events/s")
    tracker = MarkerTracker()
    follower = OutputFollower(settings, settings.dimensions[0], tracker)
    producer = make_producer(settings)
    await producer.start()
    await follower.start()
    work_dir = settings.data_dir.parent
    workers = [WorkerProcess(s, work_dir / f"worker-{i}.log") for i, s in enumerate(all_settings)]
    bench = Bench(
        plan, settings, workers, follower, tracker, producer, settings.dimensions[0], broker_pid
    )
    try:
        for worker in workers:
            worker.start()
        await _worker_phases(bench, workload, templates, result)
    finally:
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in bench.workers))
        await follower.stop()
        await producer.stop()


async def _worker_phases(
    bench: Bench, workload: Workload | None, templates: list[Payload], result: BenchResult
) -> None:
    plan = bench.plan
    if workload is not None:
        with phase("worker"):
            result.worker = await measure_throughput(bench, workload)
        say(f"worker: {result.worker.rate.events_per_second:,.0f} events/s end to end")
        if plan.verify:
            say("verify: computing the batch records")
            output = dict(bench.follower.latest)
            differences = await asyncio.to_thread(verify, bench.settings, output, workload)
            result.worker.verified = not differences
            result.worker.differences = differences
            say(f"verify: {'exact' if not differences else f'{len(differences)} differences'}")
    if plan.latency_seconds > 0:
        with phase("latency"):
            result.latency = await measure_latency(bench, templates)
    result.memory = memory_of(bench.workers)
    if plan.recovery:
        with phase("recovery"):
            result.recovery = await measure_recovery(bench)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Name the phase in a BenchError raised inside."""
    try:
        yield
    except BenchError as error:
        raise BenchError(f"{name} phase failed: {error}") from error


@contextlib.contextmanager
def work_directory(plan: Plan, run_id: str) -> Iterator[Path]:
    """A fresh directory for this run (never reuse RocksDB files of another run)."""
    if plan.work_dir is not None:
        path = plan.work_dir / f"run-{run_id}"
        path.mkdir(parents=True)
        say(f"data dirs and logs in {path}")
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="churn-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def broker_url(explicit: str | None, work_dir: Path) -> Iterator[tuple[str, int | None]]:
    """The broker's URL, and its process id when it is the embedded one."""
    if explicit:
        yield explicit, None
        return
    with EmbeddedBroker(log_path=work_dir / "broker.log", silent=True) as broker:
        yield broker.url, broker.pid


def bench(plan: Plan, base: Settings, explicit_broker: str | None) -> dict[str, Any]:
    """Run every planned phase; returns the JSON document."""
    if not base.dimensions:
        raise BenchError("the benchmark needs at least one dimension (for its markers)")
    workload = None
    if plan.events > 0:
        say(f"simulating {plan.events:,} events")
        workload = build_workload(plan, base.partitions)
    load_count = math.ceil(plan.rate * plan.latency_seconds) + 1 if plan.latency_seconds else 0
    templates = build_load(plan, base.partitions, load_count)
    run_id = uuid.uuid4().hex[:10]
    with (
        work_directory(plan, run_id) as work_dir,
        broker_url(explicit_broker, work_dir) as (url, broker_pid),
    ):
        settings = base.model_copy(update={"broker": url})
        all_settings = worker_settings(settings, run_id, work_dir / "data", plan.workers)
        result = BenchResult(
            setup=describe_setup(plan, settings, workload, url), machine=machine_info()
        )
        try:
            asyncio.run(run_phases(plan, all_settings, workload, templates, result, broker_pid))
        except BenchError as error:
            say(str(error))
            result.error = str(error)
    return result_json(result)


# --------------------------------------------------------------------------- the command


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _count(text: str) -> int:
    value = int(text.replace("_", "").replace(",", ""))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_count(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _add_workload_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("workload")
    add = group.add_argument
    add("--events", type=_count, default=DEFAULT_EVENTS, help="Events pre-produced (0: none).")
    add(
        "--customers",
        type=_positive_count,
        default=None,
        help=f"Distinct customers simulated (default: events / {EVENTS_PER_CUSTOMER}, "
        f"at most {MAX_AUTO_CUSTOMERS:,}).",
    )
    add("--days", type=_positive_count, default=None, help="Days of history (default: sized).")
    add("--seed", type=int, default=0, help="Random seed of the simulation.")
    add("--churn", type=_share, default=0.10, help="Monthly churn probability.")
    add("--duplicates", type=_share, default=0.02, help="Share of duplicate deliveries.")
    add("--out-of-order", type=_share, default=0.02, help="Share of late deliveries.")


def _add_phase_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("phases")
    add = group.add_argument
    add("--workers", type=_positive_count, default=1, help="Worker processes in one group.")
    add("--skip-limit", action="store_true", help="Skip the bare-consumer limit.")
    add("--verify", action="store_true", help="Compare the output with churn-stream batch.")
    add("--rate", type=_positive_float, default=20_000.0, help="Offered events/s (latency).")
    add(
        "--latency-seconds",
        type=_non_negative_float,
        default=30.0,
        help="Duration of the latency phase (0: skip).",
    )
    add("--markers-per-second", type=_positive_float, default=10.0, help="Latency samples/s.")
    add(
        "--drain-seconds",
        type=_non_negative_float,
        default=120.0,
        help="After the latency load, wait this long for the last markers; the rest count "
        "as lower bounds.",
    )
    add("--skip-recovery", action="store_true", help="Skip the restart.")
    add(
        "--recovery-after",
        choices=("sigterm", "sigkill"),
        default="sigterm",
        help="How the recovery phase stops the workers: SIGTERM (local tables kept) or "
        "SIGKILL (local tables discarded and restored from the changelogs).",
    )
    add(
        "--quiet-seconds",
        type=_non_negative_float,
        default=None,
        help="Output silence that ends the throughput phase (default: 3 emit intervals, >= 2).",
    )
    add("--timeout", type=_positive_float, default=3600.0, help="Limit per phase, seconds.")
    add("--json", type=Path, default=None, help="Result file (default bench-results/...json).")
    add("--work-dir", type=Path, default=None, help="Keep data dirs and logs here.")


def configure(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    parser.description = (
        "Measure production, the raw-consume limit, worker throughput end to end, latency at "
        "a steady rate, peak RSS and recovery, on the embedded broker (or --broker URL). "
        "Defaults differing from the worker's: --store rocksdb://, --dimensions plan,region, "
        "--log-level warning."
    )
    _add_workload_flags(parser)
    _add_phase_flags(parser)
    add_settings_flags(parser)
    return run


def plan_from(args: argparse.Namespace) -> Plan:
    return Plan(
        events=args.events,
        customers=args.customers,
        days=args.days,
        seed=args.seed,
        churn=args.churn,
        duplicates=args.duplicates,
        out_of_order=args.out_of_order,
        workers=args.workers,
        rate=args.rate,
        latency_seconds=args.latency_seconds,
        markers_per_second=args.markers_per_second,
        drain_seconds=args.drain_seconds,
        limit=not args.skip_limit,
        recovery=not args.skip_recovery,
        verify=args.verify,
        quiet_seconds=args.quiet_seconds,
        timeout=args.timeout,
        json_path=args.json or default_json_path(),
        work_dir=args.work_dir,
        recovery_after=args.recovery_after,
    )


def bench_settings(args: argparse.Namespace) -> Settings:
    """The settings flags and CHURN_* variables, with the bench's own defaults."""
    settings = settings_from(args)
    update: dict[str, Any] = {}
    if args.setting_store is None and "CHURN_STORE" not in os.environ:
        update["store"] = DEFAULT_STORE
    if args.setting_dimensions is None and "CHURN_DIMENSIONS" not in os.environ:
        update["dimensions"] = DEFAULT_DIMENSIONS
    if args.setting_log_level is None:
        update["log_level"] = "warning"
    return settings.model_copy(update=update)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so that the workers and the broker are stopped."""
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    try:
        plan = plan_from(args)
        settings = bench_settings(args)
    except (ValueError, ValidationError) as error:
        print(f"bench: invalid configuration: {error}", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        data = bench(plan, settings, args.setting_broker)
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    write_json(plan.json_path, data)
    print(format_table(data))
    print(f"results: {plan.json_path}")
    return 1 if data["error"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="churn-stream bench")
    handler = configure(parser)
    return handler(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
