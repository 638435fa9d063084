"""Settings that reach the worker's faust app as faust options."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest

from stream.app import CUSTOMERS_ROCKSDB, SMALL_TABLE_ROCKSDB, create_app
from stream.ingest import ingest_instance_id
from stream.rocksdb_memory import SharedMemoryOptions
from stream.settings import Settings


def test_no_standby_replicas_unless_asked(tmp_path: Path) -> None:
    """faust's default is 1; each copy replays every history write of another worker."""
    assert Settings().standby_replicas == 0
    assert create_app(Settings(data_dir=tmp_path / "data")).app.conf.table_standby_replicas == 0


@pytest.mark.parametrize("replicas", [1, 2])
def test_standby_replicas_reach_faust(tmp_path: Path, replicas: int) -> None:
    settings = Settings(data_dir=tmp_path / "data", standby_replicas=replicas)
    assert create_app(settings).app.conf.table_standby_replicas == replicas


def test_dynamic_membership_unless_a_name_is_given(tmp_path: Path) -> None:
    worker = create_app(Settings(data_dir=tmp_path / "data"))
    assert worker.app.conf.consumer_group_instance_id is None
    assert ingest_instance_id(worker.settings) is None


def test_a_static_member_name_reaches_faust_and_the_ingest_consumer(tmp_path: Path) -> None:
    """The ingest stage's group is not faust's: its member needs a name of its own."""
    settings = Settings(data_dir=tmp_path / "data", group_instance_id="churn-stream-0")
    worker = create_app(settings)
    assert worker.app.conf.consumer_group_instance_id == "churn-stream-0"
    assert ingest_instance_id(settings) == "churn-stream-0-ingest"


def test_every_rocksdb_table_opens_within_the_one_memory_budget(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", store="rocksdb://", rocksdb_memory_mb=64)
    worker = create_app(settings)
    memory = worker.rocksdb_memory
    assert memory is not None and memory.budget_bytes == 64 * 1024 * 1024
    tables = [worker.customers_table, *worker.aggregate_tables, worker.spike_table]
    for table in tables:
        options = table.data.rocksdb_options
        assert isinstance(options, SharedMemoryOptions) and options.memory is memory, table.name
    # what each table asked of faust is kept (memtable sizes per database)
    sizes = [table.data.rocksdb_options.write_buffer_size for table in tables]
    assert sizes == [CUSTOMERS_ROCKSDB["write_buffer_size"]] + 4 * [
        SMALL_TABLE_ROCKSDB["write_buffer_size"]
    ]
    assert b"churn_rocksdb_memory_bytes 0.0" in generate_latest(worker.metrics.registry)


def test_the_memory_store_has_no_rocksdb_budget(tmp_path: Path) -> None:
    worker = create_app(Settings(data_dir=tmp_path / "data"))
    assert worker.rocksdb_memory is None
    assert b"churn_rocksdb_memory_bytes" not in generate_latest(worker.metrics.registry)
