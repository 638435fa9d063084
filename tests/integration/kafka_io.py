"""Test-side Kafka I/O and worker processes for the integration tests."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import SecretStr

from stream.batch import compute_records
from stream.broker import free_port
from stream.cli import worker_command
from stream.events import compact, parse_event
from stream.settings import Settings
from stream.simulator import SimulationConfig, generate_events
from tests.compare import differences

Records = dict[str, dict[str, Any]]


async def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[bytes],
    key_for: Callable[[bytes], bytes | None] | None = None,
) -> int:
    """Send `values`; the key is the payload's customer_id unless `key_for` says otherwise."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    sent = 0
    try:
        for value in values:
            key = (key_for or _customer_key)(value)
            await producer.send(topic, value, key=key)
            sent += 1
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def produce_paced(
    bootstrap: str, topic: str, values: Sequence[bytes], per_second: float, chunk: int = 50
) -> int:
    """Send `values` at about `per_second` messages per second (in small bursts)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    began = time.monotonic()
    try:
        for start in range(0, len(values), chunk):
            for value in values[start : start + chunk]:
                await producer.send(topic, value, key=_customer_key(value))
            await producer.flush()
            due = began + (start + chunk) / per_second
            await asyncio.sleep(max(0.0, due - time.monotonic()))
    finally:
        await producer.stop()
    return len(values)


def _customer_key(value: bytes) -> bytes | None:
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    customer = body.get("customer_id") if isinstance(body, dict) else None
    return customer.encode() if isinstance(customer, str) else None


async def read_all(bootstrap: str, topic: str, idle_seconds: float = 1.5) -> list[Any]:
    """Every message currently in `topic` (stops after `idle_seconds` without news)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    messages: list[Any] = []
    try:
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < idle_seconds:
            batches = await consumer.getmany(timeout_ms=300)
            for batch in batches.values():
                messages.extend(batch)
                idle_since = time.monotonic()
    finally:
        await consumer.stop()
    return messages


class OutputFollower:
    """Keeps the latest record per key of the output topic while a test runs."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
        )
        self.latest: Records = {}
        self.received = 0
        # a key's record whose revision is not above the one before it (README: a consumer
        # keeps the highest revision, so revisions must only grow, even across crashes)
        self.revisions_not_growing: list[str] = []

    async def __aenter__(self) -> OutputFollower:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            batches = await self._consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                for message in batch:
                    self._receive(message.key.decode(), orjson.loads(message.value))

    def _receive(self, key: str, record: dict[str, Any]) -> None:
        previous = self.latest.get(key)
        if previous is not None and record["revision"] <= previous["revision"]:
            self.revisions_not_growing.append(
                f"{key}: revision {record['revision']} after {previous['revision']}"
            )
        self.latest[key] = record
        self.received += 1

    async def wait_until(
        self, done: Callable[[Records], bool], timeout: float, step: float = 1.0
    ) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await self.poll(step)
            if done(self.latest):
                return True
        return False


def settings_env(settings: Settings) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHURN_")}
    for name, value in settings.model_dump(exclude_none=True).items():
        if isinstance(value, tuple):
            value = ",".join(value)
        elif isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"CHURN_{name.upper()}"] = str(value)
    return env


def reliability_settings(
    prefix: str, broker_url: str, tmp_path: Path, **overrides: Any
) -> Settings:
    """Settings of the reliability tests: unique names and a fast failover (producer
    batches as by default: restores read to the last record, stream/end_offsets.py)."""
    values: dict[str, Any] = {
        "broker": broker_url,
        "app_id": f"{prefix}app",
        "input_topic": f"{prefix}events",
        "output_topic": f"{prefix}metrics",
        "dlq_topic": f"{prefix}dlq",
        "alert_topic": f"{prefix}alerts",
        "dimensions": DIMENSIONS,
        "metrics_port": free_port(),
        "data_dir": tmp_path / "data",
        "emit_interval_seconds": 0.5,
        "session_timeout_seconds": 6,
        "max_future_seconds": 10**9,
    }
    return Settings(**(values | overrides))


class WorkerProcess:
    """`churn-stream worker` as a child process, with its log in a file (appended to by
    every start, so one file tells the story of a test's restarts)."""

    def __init__(
        self, settings: Settings, log_path: Path, extra_env: dict[str, str] | None = None
    ) -> None:
        self.settings = settings
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.starts += 1
        log.write(f"\n===== start {self.starts} =====\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            worker_command(),
            env=settings_env(self.settings) | self.extra_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def rss_bytes(self) -> int:
        """Resident set size from /proc (Linux)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc status")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    @property
    def metrics_url(self) -> str:
        return f"http://{self.settings.metrics_host}:{self.settings.metrics_port}/metrics"

    def scrape(self, names: Sequence[str] = ()) -> str:
        """The worker's /metrics; with `names`, asked for only those samples."""
        query = urllib.parse.urlencode([("name[]", name) for name in names])
        url = f"{self.metrics_url}?{query}" if query else self.metrics_url
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    async def wait_for_metrics(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.assert_running()
            try:
                self.scrape()
                return
            except OSError:
                await asyncio.sleep(0.5)
        raise AssertionError(f"worker /metrics did not answer in {timeout}s\n{self.log_tail()}")

    def assert_running(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"worker exited with {self.process.returncode}\n"
                f"first error of this run:\n{self.first_error()}\n"
                f"last lines:\n{self.log_tail()}"
            )

    def stop(self, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def first_error(self, lines: int = 40) -> str:
        """The first ERROR/CRITICAL record or traceback of the latest run, with what
        follows it: a crash's cause, which the shutdown that follows pushes out of the tail."""
        run = self.log_text().split(f"===== start {self.starts} =====")[-1].splitlines()
        for index, line in enumerate(run):
            if "[ERROR]" in line or "[CRITICAL]" in line or line.startswith("Traceback"):
                return "\n".join(run[index : index + lines])
        return "(none logged)"


def sample_value(metrics_text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format (None if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def sample_names(metrics_text: str) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        sample.name
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
    }


def sample_sum(metrics_text: str, name: str) -> float:
    """The sum of every sample of `name` (all label values); 0 when absent."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        float(sample.value)
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == name
    )


def assigned_partitions(metrics_text: str, topic: str) -> set[int]:
    """Partitions of `topic` a worker reports in `churn_assigned_partition`."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        int(sample.labels["partition"])
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == "churn_assigned_partition"
        and sample.labels.get("topic") == topic
        and sample.value == 1
    }


# -- expected results ------------------------------------------------------------------

DIMENSIONS = ("plan", "region")


def simulated(
    customers: int,
    days: int,
    seed: int,
    start: date = date(2026, 1, 1),
    duplicates: float = 0.03,
    out_of_order: float = 0.05,
) -> list[bytes]:
    config = SimulationConfig(
        customers=customers,
        start=start,
        days=days,
        seed=seed,
        duplicate_fraction=duplicates,
        out_of_order_fraction=out_of_order,
    )
    return [orjson.dumps(event) for event in generate_events(config)]


def expected_records(raw: Iterable[bytes], dimensions: tuple[str, ...] = DIMENSIONS) -> Records:
    """`churn-stream batch` over the valid messages among `raw`, keyed like the output."""
    events = []
    for value in raw:
        try:
            events.append(compact(parse_event(value), dimensions))
        except ValueError:
            continue
    return {
        f"{r['window']}/{r['dimension']}/{r['segment']}/{r['window_start']}": r
        for r in compute_records(events, dimensions)
    }


async def converge(bootstrap: str, topic: str, expected: Records, timeout: float) -> Records:
    """Follow the output topic until its latest records equal `expected`; fail with the
    first differences otherwise."""
    async with OutputFollower(bootstrap, topic) as output:
        done = await output.wait_until(lambda latest: not differences(latest, expected), timeout)
        assert done, differences(output.latest, expected)[:20]
        assert output.revisions_not_growing == []
        return dict(output.latest)


def shuffled(values: Sequence[bytes], seed: int) -> list[bytes]:
    copy = list(values)
    random.Random(seed).shuffle(copy)
    return copy
