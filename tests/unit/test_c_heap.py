"""The worker's C heap: real glibc, this process's heap or a fresh interpreter's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stream.c_heap import heap_figures, heap_trimmer, map_large_blocks

MIB = 1024 * 1024
trim = heap_trimmer()
figures = heap_figures()
needs_glibc = pytest.mark.skipif(
    trim is None or figures is None, reason="needs glibc's malloc_trim and mallinfo2"
)

# A fresh interpreter frees one 4 MiB block (mapped on its own, as glibc maps anything over
# its threshold), then holds sixteen of 256 KiB: the bytes in mapped blocks it prints say
# where they came from.
MAPPED_AFTER_A_FREE = """
import sys
from stream.c_heap import heap_figures, map_large_blocks
print(map_large_blocks() if sys.argv[1] == "set" else None)
large = bytes(4 * 1024 * 1024)
del large
blocks = [bytes(256 * 1024) for _ in range(16)]
print(heap_figures()()["mapped"])
"""


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _mapped_after_a_free(mode: str, **environment: str) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", MAPPED_AFTER_A_FREE, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **environment},
    )
    answer, mapped = done.stdout.split()
    return answer, int(mapped)


@needs_glibc
def test_free_pages_below_live_allocations_go_back_to_the_system() -> None:
    assert trim is not None
    trim()
    # CPython hands objects over 512 bytes to malloc: 64 MiB of them on the C heap. Every
    # 16th stays alive, so what the others leave is free memory between live allocations,
    # which glibc does not return by itself (only the top of its heap).
    blocks = [bytes(4096) for _ in range(16 * 1024)]
    pinned = blocks[::16]
    allocated = _rss_bytes()
    del blocks
    freed = _rss_bytes()
    assert freed > allocated - 8 * MIB  # freed, yet still resident
    assert trim() is True
    assert _rss_bytes() < freed - 32 * MIB
    assert len(pinned) == 1024


@needs_glibc
def test_large_blocks_stay_mapped_on_their_own_once_the_threshold_is_set() -> None:
    answer, mapped = _mapped_after_a_free("set")
    assert answer == "True" and mapped >= 4 * MIB
    # glibc's own behaviour, which the setting turns off: freeing the 4 MiB block raised
    # its threshold, so the 256 KiB blocks came from the heap
    assert _mapped_after_a_free("default")[1] < MIB


@needs_glibc
def test_the_operators_own_threshold_stands() -> None:
    answer, mapped = _mapped_after_a_free("set", MALLOC_MMAP_THRESHOLD_=str(8 * MIB))
    assert answer == "False"
    assert mapped < MIB


@needs_glibc
def test_heap_figures() -> None:
    assert figures is not None
    held = bytes(64 * 1024)
    found = figures()
    assert set(found) == {"in_use", "free", "mapped"}
    assert found["in_use"] >= len(held) and found["free"] >= 0 and found["mapped"] >= 0


def test_nothing_to_call_without_glibc() -> None:
    library = "libno-such-library.so"
    assert heap_trimmer(library) is None
    assert heap_figures(library) is None
    assert map_large_blocks(library=library) is False
