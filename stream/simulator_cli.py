"""`churn-stream simulate`: produce synthetic lifecycle events to Kafka or a JSON Lines file."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from itertools import islice
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from stream.cli import add_settings_flags, settings_from
from stream.kafka_config import aiokafka_options
from stream.settings import Settings
from stream.simulator import SimulationConfig, Spike, generate_events, parse_spike

LINGER_MS: Final = 10
BURST_SECONDS: Final = 0.05  # the token bucket holds this many seconds of events
YIELD_EVERY: Final = 500  # unthrottled: let the event loop run (sender, signals) this often
_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


class DeliveryError(RuntimeError):
    """Some produced events were not acknowledged by the broker."""

    def __init__(self, acked: int, failed: int, first: BaseException) -> None:
        super().__init__(f"{failed} events were not delivered ({acked} were): {first}")
        self.acked = acked
        self.failed = failed


class TokenBucket:
    """Allows `rate` events per second on average, in bursts of at most `burst`."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self._rate = rate
        self._capacity = burst if burst is not None else max(1.0, rate * BURST_SECONDS)
        self._tokens = 1.0
        self._last = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
        self._last = now

    async def take(self) -> None:
        self._refill()
        while self._tokens < 1:
            await asyncio.sleep((1 - self._tokens) / self._rate)
            self._refill()
        self._tokens -= 1


class DeliveryTally:
    """Counts delivery results of the produced messages (futures' done callbacks); readable
    while they are being produced."""

    def __init__(self) -> None:
        self.acked = 0
        self.failed = 0
        self.first_error: BaseException | None = None

    def record(self, future: asyncio.Future[Any]) -> None:
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or error is not None:
            self.failed += 1
            self.first_error = self.first_error or error or asyncio.CancelledError()
        else:
            self.acked += 1


async def start_producer(producer: AIOKafkaProducer) -> None:
    """Start `producer`; if that fails (broker unreachable), close it and re-raise."""
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise


async def produce_events(
    settings: Settings,
    events: Iterable[dict[str, Any]],
    rate: float,
    stop: asyncio.Event | None = None,
    tally: DeliveryTally | None = None,
) -> int:
    """Produce `events` to the input topic at `rate` per second (0: unthrottled).

    Key = customer_id, value = the JSON. Returns the number of events acknowledged (also
    counted in `tally` as they are); stops early (after delivering what was sent) once
    `stop` is set. Raises KafkaError when the broker cannot be reached and DeliveryError
    when some events were not acknowledged.
    """
    producer = AIOKafkaProducer(linger_ms=LINGER_MS, **aiokafka_options(settings))
    await start_producer(producer)
    tally = DeliveryTally() if tally is None else tally
    try:
        await _send_all(producer, settings.input_topic, events, rate, stop, tally)
        await producer.flush()
    finally:
        await producer.stop()
    if tally.failed:
        assert tally.first_error is not None
        raise DeliveryError(tally.acked, tally.failed, tally.first_error)
    return tally.acked


async def _send_all(
    producer: AIOKafkaProducer,
    topic: str,
    events: Iterable[dict[str, Any]],
    rate: float,
    stop: asyncio.Event | None,
    tally: DeliveryTally,
) -> None:
    bucket = TokenBucket(rate) if rate > 0 else None
    for count, event in enumerate(events, start=1):
        if stop is not None and stop.is_set():
            return
        if bucket is not None:
            await bucket.take()
        elif count % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        key = str(event["customer_id"]).encode()
        future = await producer.send(topic, orjson.dumps(event), key=key)
        future.add_done_callback(tally.record)


# --------------------------------------------------------------------------- the command


def _probability(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None


def spike_argument(text: str) -> Spike:
    try:
        return parse_spike(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_simulation_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--rate", type=_number, default=200.0, help="Events per second (0: unthrottled).")
    add("--customers", type=_positive_int, default=1000, help="Distinct customers.")
    add("--days", type=_positive_int, default=90, help="Days of history.")
    add("--start", type=_date, default=None, help="First day (default: DAYS before today).")
    add("--churn", type=_probability, default=0.05, help="Monthly churn probability.")
    add("--seed", type=int, default=0, help="Random seed: same seed, same events.")
    add(
        "--spike",
        type=spike_argument,
        action="append",
        default=[],
        metavar="START:DAYS:MULT[:DIM=VALUE]",
        help="Multiply the churn probability for DAYS days from START (UTC), optionally only "
        "for one plan or region, e.g. 2026-03-01:7:5:plan=pro. Repeatable.",
    )
    add("--duplicates", type=_probability, default=0.0, help="Share of re-emitted messages.")
    add("--out-of-order", type=_probability, default=0.0, help="Share of late deliveries.")
    add("--limit", type=_positive_int, default=None, help="Stop after this many events.")
    add(
        "--output",
        type=Path,
        default=None,
        metavar="FILE",
        help="Write JSON Lines to FILE ('-': stdout) instead of producing to Kafka.",
    )


def configure(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    _add_simulation_flags(parser)
    add_settings_flags(parser)
    return run


def config_from(args: argparse.Namespace) -> SimulationConfig:
    start = args.start or datetime.now(UTC).date() - timedelta(days=args.days)
    return SimulationConfig(
        customers=args.customers,
        start=start,
        days=args.days,
        seed=args.seed,
        churn_probability=args.churn,
        duplicate_fraction=args.duplicates,
        out_of_order_fraction=args.out_of_order,
        spikes=tuple(args.spike),
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from(args)
        settings = None if args.output else settings_from(args)
    except (ValueError, ValidationError) as error:
        _error(f"invalid configuration: {error}")
        return 2
    events: Iterator[dict[str, Any]] = generate_events(config)
    if args.limit is not None:
        events = islice(events, args.limit)
    if settings is None:
        return write_jsonl(args.output, events)
    return asyncio.run(_produce_until_signalled(settings, events, args.rate))


def _error(message: str) -> None:
    sys.stderr.write(f"simulate: {message}\n")


def _summary(count: int, seconds: float, where: str) -> str:
    rate = count / seconds if seconds > 0 else 0.0
    return f"simulate: {count} events {where} in {seconds:.1f} s ({rate:,.0f} events/s)"


def write_jsonl(path: Path, events: Iterable[dict[str, Any]]) -> int:
    """Write events as JSON Lines to `path` ('-': stdout) until done or SIGINT/SIGTERM."""
    to_stdout = str(path) == "-"
    started = time.monotonic()
    try:
        with _stop_flag() as stopped, _open_output(path) as out:
            count = _write_lines(out, events, stopped)
    except OSError as error:
        _error(f"cannot write {path}: {error.strerror or error}")
        return 1
    summary = _summary(count, time.monotonic() - started, f"written to {path}")
    print(summary, file=sys.stderr if to_stdout else sys.stdout)
    return 0


@contextlib.contextmanager
def _open_output(path: Path) -> Iterator[IO[bytes]]:
    if str(path) == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with path.open("wb") as out:
        yield out


def _write_lines(out: IO[bytes], events: Iterable[dict[str, Any]], stopped: list[bool]) -> int:
    count = 0
    for event in events:
        if stopped:
            break
        out.write(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
        count += 1
    return count


@contextlib.contextmanager
def _stop_flag() -> Iterator[list[bool]]:
    """A list that becomes non-empty on SIGINT/SIGTERM (previous handlers restored after)."""
    stopped: list[bool] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        stopped.append(True)

    previous: dict[signal.Signals, Any] = {}
    with contextlib.suppress(ValueError):  # not the main thread: no signal handling
        for signum in _STOP_SIGNALS:
            previous[signum] = signal.signal(signum, handle)
    try:
        yield stopped
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


async def _produce_until_signalled(
    settings: Settings, events: Iterable[dict[str, Any]], rate: float
) -> int:
    stop = asyncio.Event()
    _stop_on_signals(stop)
    started = time.monotonic()
    try:
        sent = await produce_events(settings, events, rate, stop)
    except (KafkaError, OSError) as error:
        _error(f"cannot produce to {settings.broker} ({settings.input_topic}): {error}")
        return 1
    except DeliveryError as error:
        _error(str(error))
        return 1
    print(_summary(sent, time.monotonic() - started, f"sent to {settings.input_topic}"))
    return 0


def _stop_on_signals(stop: asyncio.Event) -> None:
    """First SIGINT/SIGTERM: stop producing and flush; a second one interrupts as usual."""
    loop = asyncio.get_running_loop()

    def handle() -> None:
        stop.set()
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)

    for signum in _STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, handle)
