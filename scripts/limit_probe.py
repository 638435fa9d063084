"""How the bench's limit depends on how many records its consumer takes per getmany.

`churn-stream bench`'s limit is a bare aiokafka consumer reading and decoding the input
topic. This probe produces the bench's workload once to an embedded broker and reads it
back `--rounds` times, cycling through `--max-records` values, with CPython's garbage
collector on as in any plain consumer. Each round prints the rate, the process's CPU
time, and the time spent in collections (timed with a `gc` callback) with the number of
full ones:

    .venv/bin/python scripts/limit_probe.py --events 1000000 --max-records 500,100000 --rounds 6

Records that outlive a young collection are promoted and walked again by the older ones,
so a loop that holds thousands of records at a time pays for them over and over
(README, Benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream import bench
from stream.broker import EmbeddedBroker, TopicSpec, create_topics
from stream.settings import Settings

READ_TIMEOUT_S = 300.0


@dataclass
class CollectorClock:
    """Seconds spent in CPython's collections, and how many were full, since reset."""

    seconds: float = 0.0
    full: int = 0
    _started: float = field(default=0.0, repr=False)

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.seconds += time.perf_counter() - self._started
        self.full += info["generation"] == 2

    def reset(self) -> None:
        self.seconds, self.full = 0.0, 0


@dataclass(frozen=True)
class Round:
    max_records: int
    events: int
    seconds: float
    cpu_seconds: float
    gc_seconds: float
    full_collections: int

    def row(self) -> str:
        return (
            f"max_records {self.max_records:>7,}  {self.events / self.seconds:>9,.0f} events/s  "
            f"cpu {self.cpu_seconds:5.2f} s  in collections {self.gc_seconds:5.2f} s "
            f"({self.full_collections} full)"
        )


def workload_plan(events: int) -> bench.Plan:
    return bench.Plan(
        events=events,
        customers=None,
        days=None,
        seed=0,
        churn=0.1,
        duplicates=0.02,
        out_of_order=0.02,
        workers=1,
        rate=0.0,
        latency_seconds=0.0,
        markers_per_second=10.0,
        drain_seconds=0.0,
        limit=True,
        recovery=False,
        verify=False,
        quiet_seconds=None,
        timeout=READ_TIMEOUT_S,
        json_path=Path("unused.json"),
        work_dir=None,
    )


async def read_rounds(
    settings: Settings, events: int, sizes: list[int], rounds: int
) -> list[Round]:
    clock = CollectorClock()
    gc.callbacks.append(clock)
    try:
        results = []
        for index in range(rounds):
            size = sizes[index % len(sizes)]
            clock.reset()
            cpu = time.process_time()
            rate = await bench.consume_topic(settings, events, READ_TIMEOUT_S, size)
            results.append(
                Round(
                    size,
                    rate.events,
                    rate.seconds,
                    time.process_time() - cpu,
                    clock.seconds,
                    clock.full,
                )
            )
            print(results[-1].row(), flush=True)
        return results
    finally:
        gc.callbacks.remove(clock)


async def run(args: argparse.Namespace, broker: EmbeddedBroker) -> list[Round]:
    workload = bench.build_workload(workload_plan(args.events), args.partitions)
    settings = Settings(broker=broker.url, partitions=args.partitions, input_topic=args.topic)
    await create_topics(settings.bootstrap_servers, [TopicSpec(args.topic, args.partitions)])
    produced = await bench.produce_workload(settings, workload.payloads)
    print(f"produced {produced.events:,} events", flush=True)
    return await read_rounds(settings, produced.events, args.max_records, args.rounds)


def _sizes(text: str) -> list[int]:
    sizes = [int(part) for part in text.split(",")]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("record counts must be positive")
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument(
        "--max-records", type=_sizes, default=[500, 100_000], help="comma-separated"
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--topic", default="limit-probe-events")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Round]:
    args = parse_args(argv)
    with EmbeddedBroker(silent=True) as broker:
        return asyncio.run(run(args, broker))


if __name__ == "__main__":
    main()
