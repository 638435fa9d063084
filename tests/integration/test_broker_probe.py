"""scripts/broker_fetch_probe.py (README, Benchmark) runs and reports what it measured."""

from __future__ import annotations

import re

from stream.broker import EmbeddedBroker
from tests.scripts import load_script

ROW = re.compile(
    r"t=\s*[\d.]+s\s+sent=\s*([\d,]+)\s+consumed=\s*([\d,]+)\s+lag=\s*-?[\d,]+\s+"
    r"broker CPU=\s*[\d.]+%"
)


async def test_the_probe_produces_consumes_and_reports_the_broker_cpu(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    probe_module = load_script("broker_fetch_probe")
    probe = probe_module.parse_args(["--rate", "2000", "--seconds", "3", "--report-seconds", "1"])
    probe = probe_module.Probe(**{**vars(probe), "topic": f"{topic_prefix}probe"})
    rows = await probe_module.run(probe, broker)
    assert len(rows) >= 2
    parsed = [ROW.fullmatch(row) for row in rows]
    assert all(parsed), rows
    sent, consumed = (int(value.replace(",", "")) for value in parsed[-1].groups())  # type: ignore[union-attr]
    assert sent >= 2000 and 0 < consumed <= sent
