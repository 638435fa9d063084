"""How fast this machine's cores are right now, alone and side by side, without Kafka.

`churn-stream bench`'s limit is one process decoding the input (its CPU: ~96 % of a core,
the broker ~5 %), while the worker phase keeps both cores busy; the ratio of the two moves
with the machine's speed, which drifts by the hour here (README, Benchmark → Measured
here). This probe times two units of work in CPU seconds, each alone and then two at once
in two processes, `--rounds` times:

- `small`: orjson decodes one event 600,000 times and a loop does integer arithmetic: it
  stays in the CPU's caches;
- `large`: orjson decodes 300,000 distinct events (~60 MB of bytes and objects) twice, as
  the limit's consumer decodes big fetches: it streams through memory.

It prints the median CPU time of each, alone and in pairs. Pairs as fast as singles mean
the two cores do not slow each other down; a `large` median that moves between hours while
`small` stays put means the machine's memory, not its cores, moved.

    .venv/bin/python scripts/core_probe.py --rounds 8
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

import orjson

EVENT = {
    "event_id": "c000001-17",
    "type": "purchase",
    "customer_id": "c000001",
    "occurred_at": "2026-11-02T10:11:12.345Z",
    "amount": 12.5,
    "attributes": {"plan": "pro", "region": "eu"},
}
LARGE_EVENTS = 300_000


def small_unit() -> float:
    """CPU seconds of the cache-resident unit."""
    started = time.process_time()
    payload = orjson.dumps(EVENT)
    loads = orjson.loads
    for _ in range(600_000):
        loads(payload)
    total = 0
    for i in range(1_200_000):
        total += i * i % 7
    return time.process_time() - started


def large_unit() -> float:
    """CPU seconds of decoding many distinct events twice (their bytes built untimed)."""
    payloads = [
        orjson.dumps({**EVENT, "event_id": f"c{i:06d}-17", "customer_id": f"c{i:06d}"})
        for i in range(LARGE_EVENTS)
    ]
    started = time.process_time()
    loads = orjson.loads
    for _ in range(2):
        decoded = [loads(payload) for payload in payloads]
        del decoded
    return time.process_time() - started


UNITS = {"small": small_unit, "large": large_unit}


def run_unit(name: str) -> float:
    return UNITS[name]()


def measure(rounds: int) -> dict[str, tuple[list[float], list[float]]]:
    """unit name -> (CPU seconds alone, CPU seconds of each of a pair), alternating."""
    found: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in UNITS}
    with multiprocessing.Pool(2) as pool:
        for _ in range(rounds):
            for name, (alone, paired) in found.items():
                alone.append(pool.apply(run_unit, (name,)))
                paired.extend(pool.map(run_unit, [name, name], chunksize=1))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    arguments = parser.parse_args()
    print(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    for name, (alone, paired) in measure(arguments.rounds).items():
        single, pair = statistics.median(alone), statistics.median(paired)
        print(
            f"{name:5s}  alone {single:.3f} s (range {min(alone):.3f}-{max(alone):.3f})  "
            f"two at once {pair:.3f} s (range {min(paired):.3f}-{max(paired):.3f})  "
            f"pair / alone x{pair / single:.2f}"
        )


if __name__ == "__main__":
    main()
