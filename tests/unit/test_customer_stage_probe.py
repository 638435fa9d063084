"""scripts/customer_stage_probe.py (README, Benchmark) reports CPU per event and a digest
of the differences that does not depend on how the events were batched."""

from __future__ import annotations

import re

import pytest

from tests.scripts import load_script

REPORT = re.compile(
    r"^([\d,]+) events in ([\d,]+) customer batches: [\d.]+ s of CPU, [\d.]+ µs an event "
    r"\((compiled|pure Python)\); digest ([0-9a-f]{16})$"
)


def _report(capsys: pytest.CaptureFixture[str], *args: str) -> re.Match[str]:
    load_script("customer_stage_probe").main(["--events", "3000", *args])
    match = REPORT.match(capsys.readouterr().out.strip())
    assert match, "unexpected report"
    return match


def test_the_digest_is_the_same_whatever_the_batching(capsys):
    whole = _report(capsys, "--batch", "3000", "--partitions", "1")
    split = _report(capsys, "--batch", "250", "--partitions", "8")
    assert whole[1] == split[1] == "3,000"
    assert (int(whole[2].replace(",", "")), int(split[2].replace(",", ""))) == (1, 96)
    assert whole[4] == split[4]


def test_other_events_give_another_digest(capsys):
    assert _report(capsys, "--seed", "1")[4] != _report(capsys, "--seed", "2")[4]


def test_a_shorter_history_gives_another_digest(capsys):
    assert _report(capsys, "--days", "27")[4] != _report(capsys)[4]
