"""The worker's cyclic garbage collector runs on a schedule, not on allocation counts.

CPython collects the young generation every N container allocations (net of frees). A
batch's objects (fetched records, decoded events, routed batches) stay alive until the
batch is done, so those collections walk them, often while they hold tens of thousands of
items, though reference counting frees nearly all of them once the batch is done. On the
benchmark's backlog, with the young generation collected every 20,000 allocations, that
was ~150 collections per worker at ~4 ms each (0.55-0.59 s of ~10 s of CPU), mostly while
decoding customer batches, routing and encoding an input batch, applying a customer batch
and while aiokafka built fetched records.

Collected once a second instead, what died since the last run is never walked: 16 young
collections and one full one per worker, 0.10-0.12 s in all, on the same backlog. The
objects alive at start-up (modules, faust's app) are frozen out of every collection.
Reference cycles still go within about a second.
"""

from __future__ import annotations

import gc
from typing import Final

GC_INTERVAL_SECONDS: Final = 1.0


def collect_on_schedule() -> None:
    """Move every object alive now out of the collector's sight for good (start-up
    objects live as long as the process), and stop collections triggered by allocations;
    the caller then runs `Collector.collect` every GC_INTERVAL_SECONDS."""
    gc.freeze()
    gc.disable()


FULL_EVERY: Final = 10  # collections of the young generation per collection of all


class Collector:
    """Collects the young generation on each call, and every FULL_EVERY-th call every
    generation (what survived a young collection is walked again only then)."""

    def __init__(self) -> None:
        self._calls = 0

    def collect(self) -> int:
        """One scheduled collection; the number of unreachable objects it found."""
        self._calls += 1
        return gc.collect(2 if self._calls % FULL_EVERY == 0 else 0)
