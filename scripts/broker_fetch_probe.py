"""How the embedded broker's CPU behaves under a steady live load, without any worker.

A producer sends `--rate` events/s in record batches every `--tick` seconds, spread over
`--partitions` partitions, and (unless `--no-consumer`) one consumer reads the topic as it
grows, as the ingest stage does live. Every `--report-seconds` the script prints the
broker's CPU share (from its CPU-time clock) and the consumer's lag. README (Benchmark →
Measured here) quotes what it showed: at a constant offered rate the broker's CPU climbs
with the number of record batches stored, and only while someone fetches. `--linger S`
reads as the ingest stage does since 2026-12-05: once records arrive, it waits S seconds
and reads what gathered; `--fetch-min-bytes` and `--fetch-max-wait-ms` set the consumer's.

    .venv/bin/python scripts/broker_fetch_probe.py --rate 20000 --tick 0.005 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream.bench import cpu_seconds
from stream.broker import EmbeddedBroker, TopicSpec, create_topics

TOPIC = "probe"
VALUE = b'{"event_id":"probe","padding":"' + b"x" * 160 + b'"}'  # the size of an event


@dataclass(frozen=True)
class Probe:
    rate: int
    tick: float
    seconds: float
    partitions: int
    consumer: bool
    report_seconds: float
    fetch_min_bytes: int = 1
    fetch_max_wait_ms: int = 100
    linger: float = 0.0
    topic: str = TOPIC


@dataclass
class Progress:
    sent: int = 0
    consumed: int = 0


async def consume(probe: Probe, bootstrap: str, progress: Progress) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        fetch_max_wait_ms=probe.fetch_max_wait_ms,
        fetch_min_bytes=probe.fetch_min_bytes,
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(probe.topic, p) for p in range(probe.partitions)])
        await consumer.seek_to_beginning()
        while True:
            fetched = await consumer.getmany(timeout_ms=200, max_records=10_000)
            progress.consumed += sum(len(records) for records in fetched.values())
            if probe.linger and fetched:
                # as the ingest stage reads once it is at the end of its partitions
                await asyncio.sleep(probe.linger)
                for wait_ms in (0, probe.fetch_max_wait_ms):
                    fetched = await consumer.getmany(timeout_ms=wait_ms, max_records=10_000)
                    progress.consumed += sum(len(records) for records in fetched.values())
    finally:
        await consumer.stop()


async def produce_tick(producer: AIOKafkaProducer, probe: Probe, per_partition: int) -> None:
    for partition in range(probe.partitions):
        batch = producer.create_batch()
        for _ in range(per_partition):
            batch.append(key=None, value=VALUE, timestamp=None)
        batch.close()
        await producer.send_batch(batch, probe.topic, partition=partition)


async def run(probe: Probe, broker: EmbeddedBroker) -> list[str]:
    await create_topics(broker.bootstrap, [TopicSpec(probe.topic, probe.partitions)])
    progress = Progress()
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
    await producer.start()
    reader = asyncio.create_task(
        consume(probe, broker.bootstrap, progress) if probe.consumer else asyncio.Event().wait()
    )
    rows: list[str] = []
    try:
        began = last = time.monotonic()
        cpu_before = cpu_seconds(broker.pid)
        while (now := time.monotonic()) - began < probe.seconds:
            due = int((now - began) * probe.rate) - progress.sent
            per_partition = due // probe.partitions
            if per_partition:
                await produce_tick(producer, probe, per_partition)
                progress.sent += per_partition * probe.partitions
            await asyncio.sleep(probe.tick)
            if (now := time.monotonic()) - last >= probe.report_seconds:
                cpu = cpu_seconds(broker.pid)
                rows.append(report_row(now - began, progress, (cpu - cpu_before) / (now - last)))
                print(rows[-1], flush=True)
                cpu_before, last = cpu, now
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await producer.stop()
    return rows


def report_row(elapsed: float, progress: Progress, broker_share: float) -> str:
    return (
        f"t={elapsed:6.1f}s  sent={progress.sent:>9,}  consumed={progress.consumed:>9,}  "
        f"lag={progress.sent - progress.consumed:>8,}  broker CPU={broker_share:6.1%}"
    )


def parse_args(argv: list[str] | None = None) -> Probe:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=20_000, help="events/s offered")
    parser.add_argument("--tick", type=float, default=0.005, help="seconds between batches")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--no-consumer", action="store_true", help="produce only")
    parser.add_argument("--report-seconds", type=float, default=5.0)
    parser.add_argument("--fetch-min-bytes", type=int, default=1)
    parser.add_argument("--fetch-max-wait-ms", type=int, default=100)
    parser.add_argument(
        "--linger",
        type=float,
        default=0.0,
        help="once records arrive, wait this long, then read what gathered (0: read on)",
    )
    args = parser.parse_args(argv)
    return Probe(
        args.rate,
        args.tick,
        args.seconds,
        args.partitions,
        not args.no_consumer,
        args.report_seconds,
        args.fetch_min_bytes,
        args.fetch_max_wait_ms,
        args.linger,
    )


def main(argv: list[str] | None = None) -> list[str]:
    probe = parse_args(argv)
    with EmbeddedBroker(silent=True) as broker:
        return asyncio.run(run(probe, broker))


if __name__ == "__main__":
    main()
