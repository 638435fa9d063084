"""Test-only, loaded by a worker started with this directory on PYTHONPATH: the first time
the customer stage applies several messages of a partition as one batch, the worker dies
right after that batch's differences are acknowledged, before its histories are written
(tests/integration/test_batch_redo.py)."""

from __future__ import annotations

import os
import sys
from typing import Any

if os.environ.get("CRASH_IN_BATCH") == "1":
    from stream import app

    _apply = app._apply_customer_batch
    _send = app._send_deltas
    _armed: list[str] = []

    async def _apply_then_note(
        worker: Any, partition: int, batch: list[tuple[int, bytes]], *args: Any
    ) -> None:
        if len(batch) > 1:
            _armed.append(f"{batch[0][0]}..{batch[-1][0]} of partition {partition}")
        await _apply(worker, partition, batch, *args)

    async def _send_then_crash(delta_topic: Any, messages: list[Any]) -> list[Any]:
        acks = await _send(delta_topic, messages)
        if _armed:
            for ack in acks:
                await ack
            print(f"crash in batch {_armed[0]}", file=sys.stderr)
            sys.stderr.flush()
            os._exit(9)
        return acks

    app._apply_customer_batch = _apply_then_note
    app._send_deltas = _send_then_crash
