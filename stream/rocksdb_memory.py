"""One memory budget for every RocksDB database a worker opens.

faust opens one RocksDB database per partition of every table, each with a block cache and
memtables of its own, so a worker's RocksDB memory grew with the partitions it held (a
survivor taking over a failed worker's partitions doubled it) and filled towards that
sum slowly, as reads warmed each cache. Here every database shares one block cache of
`CHURN_ROCKSDB_MEMORY_MB`, and a write buffer manager charges the memtables to that same
cache: data blocks are evicted to make room for memtables, and memtables are flushed
once they hold half of the budget. The budget is soft (RocksDB lets memtables exceed it
briefly rather than stall writers), and it leaves out what RocksDB keeps outside the
cache (the index and filter blocks of open table files: small at these key counts).
"""

from __future__ import annotations

import rocksdict
from faust.stores.rocksdb import RocksDBOptions


class RocksDBMemory:
    """The block cache and write buffer manager that every database of a worker shares."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.cache = rocksdict.Cache(budget_bytes)
        self.write_buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            budget_bytes // 2, False, self.cache
        )

    def usage_bytes(self) -> int:
        """Cached blocks plus the memtables charged to the cache."""
        return int(self.cache.get_usage())

    def options_like(self, options: RocksDBOptions) -> SharedMemoryOptions:
        """`options` (a faust store's), opening databases within this budget."""
        shared = SharedMemoryOptions(
            max_open_files=options.max_open_files,
            write_buffer_size=options.write_buffer_size,
            max_write_buffer_number=options.max_write_buffer_number,
            target_file_size_base=options.target_file_size_base,
            bloom_filter_size=options.bloom_filter_size,
            use_rocksdict=options.use_rocksdict,
            ttl=options.ttl,
            **options.extra_options,
        )
        shared.memory = self
        return shared


class SharedMemoryOptions(RocksDBOptions):  # type: ignore[misc]
    """faust's rocksdict options (those of `RocksDBOptions.as_options`), with the shared
    cache and write buffer manager where faust builds a block cache per database."""

    memory: RocksDBMemory

    def as_options(self) -> rocksdict.Options:
        if not self.use_rocksdict:
            raise ValueError("CHURN_ROCKSDB_MEMORY_MB needs faust's rocksdict driver")
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        if self.max_open_files is not None:
            options.set_max_open_files(self.max_open_files)
        options.set_write_buffer_size(self.write_buffer_size)
        options.set_target_file_size_base(self.target_file_size_base)
        options.set_max_write_buffer_number(self.max_write_buffer_number)
        options.set_write_buffer_manager(self.memory.write_buffers)
        table_options = rocksdict.BlockBasedOptions()
        table_options.set_bloom_filter(self.bloom_filter_size, block_based=True)
        table_options.set_block_cache(self.memory.cache)
        table_options.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table_options)
        return options
