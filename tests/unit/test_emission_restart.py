"""Emitting across crashes: a flush's notes (what each window last emitted) are durable
before its records are sent, and after a restart the last flush's records are emitted
again, so a crash cutting the records off leaves no window's latest record stale."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream import windows
from stream.aggregation import Aggregator
from stream.local_pipeline import LocalPipeline, apply_segment_message
from tests.builders import event, iso
from tests.compare import differences
from tests.unit.test_stream_equals_batch import DIMENSIONS, batch_records, deliveries, histories

DAY_24 = "day/all/all/2026-02-24T00:00:00+00:00"
DAY_25 = "day/all/all/2026-02-25T00:00:00+00:00"


class Table(MutableMapping[str, Any]):
    """A table as the segment stage uses it: writes held until `commit` makes them durable."""

    def __init__(self) -> None:
        self.durable: dict[str, Any] = {}
        self.pending: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        return self.pending[key] if key in self.pending else self.durable[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.pending[key] = value

    def __delitem__(self, key: str) -> None:
        raise NotImplementedError

    def __iter__(self) -> Iterator[str]:
        return iter(self.durable.keys() | self.pending.keys())

    def __len__(self) -> int:
        return len(self.durable.keys() | self.pending.keys())

    def commit(self) -> None:
        self.durable.update(self.pending)
        self.pending.clear()

    def crash(self) -> None:
        self.pending.clear()


class SegmentStage:
    """The segment stage's protocol (stream/app.py, _maybe_flush): apply messages; at a
    flush write the notes, send the records, then write entries, meta and the position.
    A crash loses what is not durable and resumes from the position."""

    def __init__(self, messages: list[tuple[str, bytes]]) -> None:
        self.messages = messages
        self.entries, self.meta, self.emitted = Table(), Table(), Table()
        self.position = -1
        self.output: dict[str, dict[str, object]] = {}
        self.start()

    def start(self) -> None:
        for table in (self.entries, self.meta, self.emitted):
            table.crash()
        self.aggregator = Aggregator(
            self.entries, self.meta, self.emitted, grace_ms=3_600_000, max_segments=50
        )
        self.aggregator.load()
        self.applied = self.position

    def apply_next(self) -> None:
        self.applied += 1
        apply_segment_message(self.aggregator, *self.messages[self.applied])

    def apply_all(self) -> None:
        while self.applied + 1 < len(self.messages):
            self.apply_next()

    def flush(self, sent: int | None = None) -> None:
        """A flush; with `sent`, a crash after that many of its records reached the output
        (-1: before its notes were durable)."""
        records = list(self.aggregator.flush())
        if sent == -1:
            self.start()
            return
        self.emitted.commit()
        if sent is not None:
            self.output.update(records[:sent])
            self.start()
            return
        self.output.update(records)
        self.entries.commit()
        self.meta.commit()
        self.position = self.applied


class Recording(LocalPipeline):
    """The customer stage of the local pipeline, keeping its segment messages."""

    def __init__(self) -> None:
        super().__init__(DIMENSIONS, partitions=3)
        self.sent: list[tuple[str, bytes]] = []

    def segment_message(self, dimension: str, raw: bytes) -> None:
        self.sent.append((dimension, raw))


def segment_messages(batches: list[list[bytes]]) -> list[tuple[str, bytes]]:
    recording = Recording()
    for batch in batches:
        recording.ingest(batch)
    return recording.sent


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_output_equals_batch_whatever_flushes_crashes_cut_off(data):
    events = data.draw(histories())
    messages = segment_messages(data.draw(deliveries(events)))
    stage = SegmentStage(messages)
    crashes = 0
    while stage.applied + 1 < len(messages):
        stage.apply_next()
        if data.draw(st.booleans()):
            crash = crashes < 4 and data.draw(st.booleans())
            crashes += crash
            stage.flush(data.draw(st.integers(-1, 40)) if crash else None)
    stage.flush()
    assert differences(stage.output, batch_records(events, None)) == []


def stage_with_two_flushes() -> SegmentStage:
    """Flush 0 emitted customer a's Feb 24; b's subscription on the 25th is applied."""
    stage = SegmentStage(segment_messages([[event("a", "subscribed", iso(2026, 2, 24), mrr=10)]]))
    stage.apply_all()
    stage.flush()
    stage.messages += segment_messages([[event("b", "subscribed", iso(2026, 2, 25), mrr=20)]])
    stage.apply_all()
    return stage


def test_each_note_carries_the_number_of_the_flush_that_wrote_it():
    stage = stage_with_two_flushes()
    stage.flush()
    numbers = {key: note[3] for key, note in stage.emitted.durable.items()}
    assert numbers[note_key(DAY_24)] == 0
    assert numbers[note_key(DAY_25)] == 1


@pytest.mark.parametrize("sent", [0, 1, 5])
def test_after_a_restart_the_last_flush_is_emitted_again_whatever_reached_the_output(sent):
    stage = stage_with_two_flushes()
    stage.flush(sent=sent)  # crash: the notes are durable, `sent` records reached the output
    stage.apply_all()  # the same messages again: the counts equal the notes
    again = dict(stage.aggregator.flush())
    assert DAY_25 in again
    assert again[DAY_25]["customers_end"] == 2
    assert again[DAY_25]["revision"] == 1  # its note's revision + 1
    assert DAY_24 not in again  # flush 0 is confirmed: its records were acknowledged
    assert list(stage.aggregator.flush()) == []  # once


def test_a_window_of_the_last_flush_beyond_what_was_restored_is_emitted_again():
    stage = stage_with_two_flushes()
    stage.flush(sent=0)
    # Restored: entries and meta as of flush 0; the 25th is past the open window, and no
    # message has been applied again yet.
    stage.flush()
    assert stage.output[DAY_25]["customers_end"] == 1  # the counts as restored: a alone
    stage.apply_all()
    stage.flush()
    assert stage.output[DAY_25]["customers_end"] == 2


def test_notes_written_before_numbering_count_as_one_unconfirmed_flush():
    stage = stage_with_two_flushes()
    stage.flush()
    for note in stage.emitted.durable.values():
        del note[3:]
    stage.start()
    again = dict(stage.aggregator.flush())
    assert {DAY_24, DAY_25} <= again.keys()
    assert list(stage.aggregator.flush()) == []


def note_key(record_key: str) -> str:
    """The key of a record's note in the emitted table."""
    kind, dimension, segment, start = record_key.split("/", 3)
    start_ms = int(datetime.fromisoformat(start).timestamp() * 1000)
    k = windows.first_containing(windows.KINDS_BY_NAME[kind], start_ms)
    return "\x1f".join((dimension, kind, segment, str(k)))
