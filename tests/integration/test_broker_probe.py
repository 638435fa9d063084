"""scripts/broker_fetch_probe.py (README, Benchmark) runs and reports what it measured."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from stream.broker import EmbeddedBroker

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "broker_fetch_probe.py"
ROW = re.compile(
    r"t=\s*[\d.]+s\s+sent=\s*([\d,]+)\s+consumed=\s*([\d,]+)\s+lag=\s*-?[\d,]+\s+"
    r"broker CPU=\s*[\d.]+%"
)


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("broker_fetch_probe", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


async def test_the_probe_produces_consumes_and_reports_the_broker_cpu(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    probe_module = _script()
    probe = probe_module.parse_args(["--rate", "2000", "--seconds", "3", "--report-seconds", "1"])
    probe = probe_module.Probe(**{**vars(probe), "topic": f"{topic_prefix}probe"})
    rows = await probe_module.run(probe, broker)
    assert len(rows) >= 2
    parsed = [ROW.fullmatch(row) for row in rows]
    assert all(parsed), rows
    sent, consumed = (int(value.replace(",", "")) for value in parsed[-1].groups())  # type: ignore[union-attr]
    assert sent >= 2000 and 0 < consumed <= sent
