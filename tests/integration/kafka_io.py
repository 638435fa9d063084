"""Test-side Kafka I/O and worker processes for the integration tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream.settings import Settings

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
                    self.latest[message.key.decode()] = orjson.loads(message.value)

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
        env[f"CHURN_{name.upper()}"] = str(value)
    return env


class WorkerProcess:
    """`churn-stream worker` as a child process, with its log in a file."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "worker"],
            env=settings_env(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.metrics_port}/metrics"

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
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
            raise AssertionError(f"worker exited with {self.process.returncode}\n{self.log_tail()}")

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

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def sample_value(metrics_text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format (None if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None
