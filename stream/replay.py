"""`churn-stream replay FILE`: backfill the input topic from a JSON Lines file.

Every non-blank line is produced byte for byte (only the line terminator is removed): the
worker validates and dead-letters, so replay drops nothing. The key is the line's
customer_id when the line is a JSON object with a string customer_id, else no key.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Final

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from stream.cli import add_settings_flags, settings_from
from stream.kafka_config import aiokafka_options
from stream.settings import Settings
from stream.simulator_cli import start_producer

BATCH_SIZE: Final = 5000  # lines in flight before waiting for their acks
LINGER_MS: Final = 20
MAX_BATCH_BYTES: Final = 1 << 20
PROGRESS_INTERVAL: Final = 0.2  # seconds between progress redraws


class ReplayError(RuntimeError):
    """A line could not be produced; `sent` lines before it were acknowledged."""

    def __init__(self, sent: int, line_number: int, error: BaseException) -> None:
        super().__init__(f"line {line_number} was not delivered: {error!r}")
        self.sent = sent
        self.line_number = line_number


def customer_key(line: bytes) -> bytes | None:
    """The message key: the customer_id of a JSON object line, else None."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict) and isinstance(customer := value.get("customer_id"), str):
        return customer.encode()
    return None


def _payloads(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number, line without its terminator) for every non-blank line."""
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield number, line.removesuffix(b"\n").removesuffix(b"\r")


class Progress:
    """A one-line, `\\r`-updated progress display: lines sent / total and events/s."""

    def __init__(self, total: int | None, out: IO[str] | None) -> None:
        self._total = total
        self._out = out
        self._started = time.monotonic()
        self._drawn = 0.0

    def update(self, sent: int, *, final: bool = False) -> None:
        if self._out is None:
            return
        now = time.monotonic()
        if not final and now - self._drawn < PROGRESS_INTERVAL:
            return
        self._drawn = now
        self._out.write("\r" + self.render(sent, now - self._started) + ("\n" if final else ""))
        self._out.flush()

    def render(self, sent: int, seconds: float) -> str:
        rate = sent / seconds if seconds > 0 else 0.0
        if self._total:
            done = f"{sent:,}/{self._total:,} lines ({100 * sent / self._total:.0f}%)"
        else:
            done = f"{sent:,} lines"
        return f"replay: {done}  {rate:,.0f} events/s"


async def replay_lines(
    settings: Settings,
    lines: Iterable[bytes],
    progress: bool,
    *,
    total: int | None = None,
    batch_size: int = BATCH_SIZE,
) -> int:
    """Produce every non-blank line to the input topic and wait for the acks.

    Returns the number of lines produced. Raises KafkaError when the broker cannot be
    reached and ReplayError when a line is not acknowledged (earlier ones were).
    """
    display = Progress(total, sys.stderr if progress else None)
    producer = AIOKafkaProducer(
        linger_ms=LINGER_MS, max_batch_size=MAX_BATCH_BYTES, **aiokafka_options(settings)
    )
    await start_producer(producer)
    try:
        sent = await _produce(producer, settings.input_topic, lines, display, batch_size)
    finally:
        await producer.stop()
    display.update(sent, final=True)
    return sent


async def _produce(
    producer: AIOKafkaProducer,
    topic: str,
    lines: Iterable[bytes],
    display: Progress,
    batch_size: int,
) -> int:
    sent = 0
    batch: list[tuple[int, asyncio.Future[Any]]] = []
    for number, payload in _payloads(lines):
        try:
            future = await producer.send(topic, payload, key=customer_key(payload))
        except KafkaError as error:
            raise ReplayError(sent + await _settle(batch, sent), number, error) from error
        batch.append((number, future))
        if len(batch) >= batch_size:
            sent += await _settle(batch, sent)
            display.update(sent)
    return sent + await _settle(batch, sent)


async def _settle(batch: list[tuple[int, asyncio.Future[Any]]], sent: int) -> int:
    """Wait for every ack of `batch`; raise for the first line that failed."""
    results = await asyncio.gather(*(future for _, future in batch), return_exceptions=True)
    for index, ((number, _), result) in enumerate(zip(batch, results, strict=True)):
        if isinstance(result, BaseException):
            raise ReplayError(sent + index, number, result)
    count = len(batch)
    batch.clear()
    return count


# --------------------------------------------------------------------------- the command


def configure(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    parser.add_argument("file", type=Path, metavar="FILE", help="JSON Lines file ('-': stdin).")
    add_settings_flags(parser)
    return run


def _error(message: str) -> None:
    sys.stderr.write(f"replay: {message}\n")


def _count_payloads(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
    except (ValueError, ValidationError) as error:
        _error(f"invalid configuration: {error}")
        return 2
    path: Path = args.file
    progress = sys.stderr.isatty()
    try:
        if str(path) == "-":
            return _replay(settings, sys.stdin.buffer, progress, None, "stdin")
        total = _count_payloads(path) if progress else None
        with path.open("rb") as handle:
            return _replay(settings, handle, progress, total, str(path))
    except OSError as error:
        _error(f"cannot read {path}: {error.strerror or error}")
        return 1


def _replay(
    settings: Settings, lines: Iterable[bytes], progress: bool, total: int | None, source: str
) -> int:
    started = time.monotonic()
    try:
        sent = asyncio.run(replay_lines(settings, lines, progress, total=total))
    except ReplayError as error:
        _error(f"{error}; {error.sent} lines before it were sent")
        return 1
    except KafkaError as error:
        _error(f"cannot reach the broker at {settings.broker}: {error}")
        return 1
    except KeyboardInterrupt:
        _error("interrupted; some lines may not have been sent")
        return 130
    seconds = time.monotonic() - started
    rate = sent / seconds if seconds > 0 else 0.0
    print(
        f"replay: {sent} events from {source} sent to {settings.input_topic} "
        f"in {seconds:.1f} s ({rate:,.0f} events/s)"
    )
    return 0
