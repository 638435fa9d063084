"""The worker's C heap (glibc's malloc): large blocks in mappings of their own, the free
pages inside the heap handed back to the system on a schedule, and its figures.

glibc serves a request of at least its mmap threshold from a mapping of its own, unmapped
when freed, and smaller ones from its heap, which it shrinks only from the top. The
threshold starts at 128 KiB but rises to the size of each mapped block freed (up to 32 MiB),
so once the first RocksDB memtable block (2 MiB for the customers table) or large fetch
buffer was freed, later ones came from the heap too, and what they left when freed stayed
resident below live allocations. In the 10-minute memory run the heap grew to ~300 MB, half
of it free, and the worker's RSS crept up with it. Setting the threshold (which turns the
rise off) kept the heap at 140-172 MB with 10-61 MB free, and `malloc_trim(0)` (2-40 ms
here) returns the whole free pages left inside it. A restore ran ~13 % slower with the
threshold fixed, so the worker fixes it once its first restore is over
(`stream/worker_cli.py`). README, Benchmark → Measured here, "The C heap" and "The
threshold after the first restore".

Where the C library is not glibc (musl, macOS) there is nothing to call: the worker runs
without it.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

GLIBC = "libc.so.6"
MMAP_THRESHOLD_BYTES = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, <malloc.h>
_OPERATOR_THRESHOLD = "MALLOC_MMAP_THRESHOLD_"  # glibc's own environment variable


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _glibc(library: str) -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(library)
    except OSError:
        return None


def map_large_blocks(threshold_bytes: int = MMAP_THRESHOLD_BYTES, library: str = GLIBC) -> bool:
    """Serve every allocation of `threshold_bytes` or more from a mapping of its own, for
    the life of the process; False where there is no glibc, or where the operator set
    glibc's MALLOC_MMAP_THRESHOLD_ (theirs stands)."""
    libc = _glibc(library)
    if libc is None or not hasattr(libc, "mallopt") or _OPERATOR_THRESHOLD in os.environ:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold_bytes))


def heap_trimmer(library: str = GLIBC) -> Callable[[], bool] | None:
    """A function releasing the whole free pages inside the heap (True if it released
    any), or None where the C library has no `malloc_trim`."""
    libc = _glibc(library)
    if libc is None or not hasattr(libc, "malloc_trim"):
        return None
    malloc_trim = libc.malloc_trim
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int

    def trim() -> bool:
        return bool(malloc_trim(0))

    return trim


def heap_figures(library: str = GLIBC) -> Callable[[], dict[str, int]] | None:
    """A function reading the heap's bytes in use, free inside it, and in mapped blocks
    (glibc's mallinfo2, over every arena), or None without it (glibc < 2.33)."""
    libc = _glibc(library)
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    mallinfo2 = libc.mallinfo2
    mallinfo2.argtypes = []
    mallinfo2.restype = _MallInfo2

    def figures() -> dict[str, int]:
        info = mallinfo2()
        return {"in_use": info.uordblks, "free": info.fordblks, "mapped": info.hblkhd}

    return figures
