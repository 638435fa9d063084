"""BufferedStore: writes held per partition until that partition commits."""

from __future__ import annotations

from typing import Any

from stream.app import BufferedStore


def test_reads_see_held_writes_and_the_table_sees_them_only_at_commit():
    table: dict[str, Any] = {"a": 1}
    store = BufferedStore(table)
    store.select(0)
    store["a"] = 2
    store["b"] = 3
    assert (store["a"], store.get("b"), store.get("c", "none")) == (2, 3, "none")
    assert table == {"a": 1}
    store.commit()
    assert table == {"a": 2, "b": 3}


def test_a_key_written_many_times_reaches_the_table_once_with_its_last_value():
    writes: list[tuple[str, Any]] = []

    class Recording(dict[str, Any]):
        def __setitem__(self, key: str, value: Any) -> None:
            writes.append((key, value))
            super().__setitem__(key, value)

    store = BufferedStore(Recording())
    for value in range(5):
        store["k"] = value
    store.commit()
    assert writes == [("k", 4)]


def test_commit_writes_only_the_selected_partition():
    table: dict[str, Any] = {}
    store = BufferedStore(table)
    store.select(0)
    store["zero"] = 0
    store.select(1)
    store["one"] = 1
    assert store["zero"] == 0  # held writes of any partition are read
    store.commit()
    assert table == {"one": 1}
    store.select(0)
    store.commit()
    assert table == {"one": 1, "zero": 0}


def test_discard_forgets_every_partition():
    table: dict[str, Any] = {"a": 1}
    store = BufferedStore(table)
    for partition in (0, 1):
        store.select(partition)
        store[f"p{partition}"] = partition
    store.discard()
    store.commit()
    assert table == {"a": 1}
    assert store.get("p0") is None


async def test_a_flush_whose_waits_spanned_a_rebalance_writes_nothing(tmp_path):
    """The rebalance discarded the held writes and positions: the flush must not write the
    position (the messages since the table's position are applied again)."""
    from stream.app import _commit_segments, _forget_unflushed, create_app
    from stream.settings import Settings

    worker = create_app(Settings(data_dir=tmp_path / "data"))
    entries_store, _ = worker.aggregate_stores
    entries_store.select(0)
    entries_store["entry"] = 7
    worker.confirmed["segments"][0] = 41
    _forget_unflushed(worker)  # the rebalance, while the flush awaited its records
    _commit_segments(worker, 0)  # would raise: no table write outside a faust stream
    assert entries_store.get("entry") is None
    assert worker.confirmed["segments"] == {}
