"""The local tables are kept only after a clean stop (stream/local_state.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream import local_state


def _tables(data_dir: Path) -> Path:
    tables = data_dir / "v1" / "tables"
    (tables / "customers-0.db").mkdir(parents=True)
    (tables / "customers-0.db" / "CURRENT").write_text("MANIFEST-000001\n")
    return tables


@pytest.mark.parametrize(
    ("clean_stop", "with_tables", "discarded", "tables_left"),
    [
        (True, True, False, True),  # clean stop: keep
        (False, True, True, False),  # crash: discard
        (False, False, False, False),  # first start: nothing to do
        (True, False, False, False),  # clean stop of a worker that held no tables
    ],
)
def test_prepare_keeps_tables_only_after_a_clean_stop(
    tmp_path: Path, clean_stop: bool, with_tables: bool, discarded: bool, tables_left: bool
) -> None:
    tables = _tables(tmp_path) if with_tables else tmp_path / "v1" / "tables"
    if clean_stop:
        local_state.mark_clean(tmp_path)
    assert local_state.prepare(tmp_path, tables) is discarded
    assert tables.exists() is tables_left
    assert not local_state.marker(tmp_path).exists(), "a start consumes the marker"


def test_a_second_start_without_a_new_clean_stop_discards(tmp_path: Path) -> None:
    tables = _tables(tmp_path)
    local_state.mark_clean(tmp_path)
    assert local_state.prepare(tmp_path, tables) is False
    # killed: no marker written by this run
    assert local_state.prepare(tmp_path, tables) is True
    assert not tables.exists()


def test_mark_clean_leaves_only_the_marker(tmp_path: Path) -> None:
    local_state.mark_clean(tmp_path / "data")
    assert [p.name for p in (tmp_path / "data").iterdir()] == [local_state.MARKER_NAME]
