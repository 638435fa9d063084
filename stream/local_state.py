"""The worker's local table state (RocksDB) is trusted only after a clean stop.

A table write reaches the local store at once and its changelog record later; the store
notes the changelog offset it holds only once the broker acknowledged the record. After a
crash the local store can therefore hold writes the changelog never received, and faust's
recovery — which replays the changelog from the noted offset over the local store —
reverts some keys and not others: counts lost or doubled. So, like Kafka Streams after an
unclean shutdown, a worker that did not stop cleanly discards its local tables and
restores them from the changelog.

A stop is clean when every table write was acknowledged by the broker; the worker then
leaves a marker in its data directory. A start consumes the marker: without one, the
local tables are discarded.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

MARKER_NAME: Final = "clean-shutdown"


def marker(data_dir: Path) -> Path:
    return data_dir / MARKER_NAME


def prepare(data_dir: Path, table_dir: Path) -> bool:
    """Before the worker opens its tables: keep them after a clean stop, else discard them.
    The marker is consumed either way. True when local tables were discarded."""
    clean = marker(data_dir)
    if clean.exists():
        clean.unlink()
        log.info("previous run stopped cleanly: keeping the local tables in %s", table_dir)
        return False
    if not table_dir.exists() or not any(table_dir.iterdir()):
        return False
    log.warning(
        "previous run did not stop cleanly: discarding the local tables in %s; "
        "they are restored from their changelog topics",
        table_dir,
    )
    shutil.rmtree(table_dir)
    return True


def mark_clean(data_dir: Path) -> None:
    """After a stop with every table write acknowledged: the next start may keep them."""
    data_dir.mkdir(parents=True, exist_ok=True)
    partial = data_dir / f".{MARKER_NAME}.partial"
    with partial.open("w") as file:
        file.write("every table write was acknowledged by the broker\n")
        file.flush()
        os.fsync(file.fileno())
    partial.replace(marker(data_dir))
