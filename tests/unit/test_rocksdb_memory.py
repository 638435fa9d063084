"""One RocksDB memory budget for every database of a worker (real RocksDB, no Kafka)."""

from __future__ import annotations

import os
from pathlib import Path

from faust.stores.rocksdb import RocksDBOptions

from stream.rocksdb_memory import RocksDBMemory

MIB = 1024 * 1024
BUDGET = 4 * MIB
VALUE_BYTES = 1000
KEYS = 3 * BUDGET // VALUE_BYTES  # each database holds three budgets of data


def _options(memory: RocksDBMemory) -> RocksDBOptions:
    faust_options = RocksDBOptions(write_buffer_size=MIB, max_write_buffer_number=2)
    return memory.options_like(faust_options)


def _key(number: int) -> bytes:
    return f"customer-{number:08d}".encode()


def _fill(db: object, keys: int) -> None:
    for number in range(keys):
        db[_key(number)] = os.urandom(VALUE_BYTES)  # type: ignore[index]


def test_faust_options_are_kept() -> None:
    memory = RocksDBMemory(BUDGET)
    options = _options(memory)
    assert (options.write_buffer_size, options.max_write_buffer_number) == (MIB, 2)
    assert options.use_rocksdict


def test_memtables_are_charged_to_the_shared_cache(tmp_path: Path) -> None:
    memory = RocksDBMemory(BUDGET)
    db = _options(memory).open(tmp_path / "a")
    try:
        opened = memory.usage_bytes()  # an empty memtable's first reservation
        assert 0 < opened <= MIB
        _fill(db, 900)  # under a MiB: stays in the memtable
        assert memory.write_buffers.get_usage() > 0
        assert memory.usage_bytes() > opened
    finally:
        db.close()


def test_every_database_reads_through_the_one_cache_within_the_budget(tmp_path: Path) -> None:
    memory = RocksDBMemory(BUDGET)
    options = _options(memory)
    first, second = options.open(tmp_path / "a"), options.open(tmp_path / "b")
    try:
        for db in (first, second):
            _fill(db, KEYS)
            db.flush()
        written = memory.usage_bytes()
        # reading the second database alone fills the shared cache: its blocks are cached
        # there, and no more than the budget of them, though it holds three budgets
        assert all(second[_key(number)] for number in range(KEYS))
        assert memory.usage_bytes() > max(written, BUDGET // 2)
        assert memory.usage_bytes() <= BUDGET
        assert all(first[_key(number)] for number in range(KEYS))
        assert memory.usage_bytes() <= BUDGET
    finally:
        first.close()
        second.close()
