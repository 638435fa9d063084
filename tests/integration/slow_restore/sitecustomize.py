"""Test-only, loaded by a worker started with this directory on PYTHONPATH: every bulk
restore of a table first waits SLOW_RESTORE_SECONDS, as a restore of a very large
changelog would (tests/integration/test_long_restore.py)."""

from __future__ import annotations

import asyncio
import os
import sys

DELAY_S = float(os.environ.get("SLOW_RESTORE_SECONDS", "0"))

if DELAY_S:
    from stream import tables

    _restore = tables.BulkTable.restore

    async def _slow_restore(self: tables.BulkTable, partitions: list[int]) -> int:
        if partitions:
            print(f"slow restore of {self.name} {partitions}: {DELAY_S:.0f}s", file=sys.stderr)
            sys.stderr.flush()
            await asyncio.sleep(DELAY_S)
        return await _restore(self, partitions)

    tables.BulkTable.restore = _slow_restore  # type: ignore[method-assign]
