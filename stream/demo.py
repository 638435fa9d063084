"""`churn-stream demo`: embedded broker + worker + simulator + a live view of the metrics.

Everything runs on loopback: the Tansu broker as a child process, the worker as a child
process (`churn-stream worker`), the simulator and the live view in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from stream.broker import EmbeddedBroker, create_topics, standard_topics
from stream.cli import add_settings_flags, settings_from, worker_command
from stream.settings import Settings
from stream.simulator import SimulationConfig, generate_events
from stream.simulator_cli import DeliveryTally, produce_events, spike_argument

VIEW_WINDOWS = ("day", "week", "month", "rolling_30d", "quarter")
WORKER_STOP_SECONDS = 20.0


def _worker_command(settings: Settings) -> tuple[list[str], dict[str, str]]:
    env = {
        **os.environ,
        "CHURN_BROKER": settings.broker,
        "CHURN_DIMENSIONS": ",".join(settings.dimensions),
        "CHURN_METRICS_PORT": str(settings.metrics_port),
        "CHURN_METRICS_HOST": settings.metrics_host,
        "CHURN_PARTITIONS": str(settings.partitions),
        "CHURN_DATA_DIR": str(settings.data_dir),
        "CHURN_LOG_LEVEL": "warning",
        "CHURN_SESSION_TIMEOUT_SECONDS": str(settings.session_timeout_seconds),
    }
    return worker_command(), env


class LiveView:
    """Latest record per key from the output topic, rendered as a small table."""

    def __init__(self, settings: Settings, out: Any = sys.stdout) -> None:
        self._settings = settings
        self._out = out
        self.latest: dict[str, dict[str, Any]] = {}
        self.received = 0

    async def follow(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            self._settings.output_topic,
            bootstrap_servers=self._settings.bootstrap_servers,
            auto_offset_reset="earliest",
            group_id=None,
        )
        await consumer.start()
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=300)
                for messages in batches.values():
                    for message in messages:
                        self.latest[message.key.decode()] = orjson.loads(message.value)
                        self.received += 1
        finally:
            await consumer.stop()

    def _open_rows(self) -> list[dict[str, Any]]:
        newest: dict[str, dict[str, Any]] = {}
        for record in self.latest.values():
            if record["dimension"] != "all":
                continue
            current = newest.get(record["window"])
            if current is None or record["window_start"] > current["window_start"]:
                newest[record["window"]] = record
        return [newest[name] for name in VIEW_WINDOWS if name in newest]

    def render(self, sent: int, started: float) -> str:
        lines = [
            f"churn-stream demo  events sent {sent:,}  metric records {self.received:,}  "
            f"elapsed {time.monotonic() - started:,.0f}s  /metrics on "
            f"http://{self._settings.metrics_host}:{self._settings.metrics_port}/metrics",
            f"{'window':<12}{'start':<12}{'cust@start':>11}{'cust@end':>9}{'new':>6}"
            f"{'react':>6}{'churned':>8}{'churn':>8}{'retain':>8}{'NRR':>8}",
        ]
        for row in self._open_rows():
            lines.append(
                f"{row['window']:<12}{row['window_start'][:10]:<12}{row['customers_start']:>11}"
                f"{row['customers_end']:>9}{row['new_customers']:>6}"
                f"{row['reactivated_customers']:>6}{row['churned_customers']:>8}"
                f"{_percent(row['churn_rate']):>8}{_percent(row['retention_rate']):>8}"
                f"{_percent(row['net_revenue_retention']):>8}"
            )
        return "\n".join(lines)

    def show(self, sent: int, started: float) -> None:
        text = self.render(sent, started)
        if self._out.isatty():
            self._out.write("\x1b[2J\x1b[H" + text + "\n")
        else:
            self._out.write(text + "\n\n")
        self._out.flush()


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


async def _run(settings: Settings, args: argparse.Namespace, stop: asyncio.Event) -> int:
    await create_topics(settings.bootstrap_servers, standard_topics(settings))
    command, env = _worker_command(settings)
    worker = subprocess.Popen(command, env=env)
    view = LiveView(settings)
    started = time.monotonic()
    sent = DeliveryTally()  # acknowledged so far, shown while the simulator produces
    config = SimulationConfig(
        customers=args.customers,
        start=datetime.now(UTC).date() - timedelta(days=args.days),
        days=args.days,
        seed=args.seed,
        churn_probability=args.churn,
        spikes=tuple(args.spike),
    )

    simulate = produce_events(settings, generate_events(config), args.rate, stop, sent)
    tasks = [asyncio.create_task(view.follow(stop)), asyncio.create_task(simulate)]
    try:
        while not stop.is_set():
            if worker.poll() is not None:
                sys.stderr.write(f"worker exited with {worker.returncode}\n")
                return 1
            view.show(sent.acked, started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=args.refresh)
            if args.duration and time.monotonic() - started >= args.duration:
                stop.set()
    finally:
        stop.set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        _stop_worker(worker)
    view.show(sent.acked, started)
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    for failure in failures:
        sys.stderr.write(f"demo: {type(failure).__name__}: {failure}\n")
    return 0 if view.received and not failures else 1


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(WORKER_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def demo(settings: Settings, args: argparse.Namespace) -> int:
    with EmbeddedBroker(port=args.broker_port) as broker:
        settings = settings.model_copy(update={"broker": broker.url})
        sys.stderr.write(f"embedded broker on {broker.url}\n")

        async def main() -> int:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            return await _run(settings, args, stop)

        return asyncio.run(main())


def configure(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    parser.add_argument(
        "--duration", type=float, default=0, help="Stop after N seconds (0: Ctrl-C)."
    )
    parser.add_argument("--rate", type=float, default=2000, help="Simulated events per second.")
    parser.add_argument("--customers", type=int, default=3000, help="Simulated customers.")
    parser.add_argument("--days", type=int, default=120, help="Days of history to simulate.")
    parser.add_argument("--churn", type=float, default=0.05, help="Monthly churn probability.")
    parser.add_argument("--seed", type=int, default=1, help="Simulator seed.")
    parser.add_argument(
        "--spike",
        type=spike_argument,
        action="append",
        default=[],
        metavar="START:DAYS:MULT[:DIM=VALUE]",
        help="Inject a churn spike (see simulate).",
    )
    parser.add_argument("--refresh", type=float, default=1.0, help="Seconds between redraws.")
    parser.add_argument("--broker-port", type=int, default=None, help="Embedded broker port.")
    add_settings_flags(parser)

    def handle(args: argparse.Namespace) -> int:
        settings = settings_from(args)
        if args.setting_session_timeout_seconds is None:  # the embedded broker joins faster
            settings = settings.model_copy(update={"session_timeout_seconds": 6})
        if not settings.dimensions:
            settings = settings.model_copy(update={"dimensions": ("plan", "region")})
        if args.setting_metrics_port is None and "CHURN_METRICS_PORT" not in os.environ:
            settings = settings.model_copy(update={"metrics_port": 6066})
        if args.setting_data_dir is None and "CHURN_DATA_DIR" not in os.environ:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            settings = settings.model_copy(update={"data_dir": Path("data") / f"demo-{stamp}"})
        return demo(settings, args)

    return handle
