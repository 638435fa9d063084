"""A tiny `churn-stream bench` end to end: every phase runs and the JSON is complete.

Speed targets are measured by the benchmark, never asserted here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import orjson

EVENTS = 3000


def test_tiny_bench_writes_complete_results(tmp_path):
    path = tmp_path / "bench.json"
    command = [
        sys.executable,
        "-m",
        "stream.cli",
        "bench",
        "--events",
        str(EVENTS),
        "--latency-seconds",
        "3",
        "--rate",
        "100",
        "--drain-seconds",
        "30",
        "--verify",
        "--store",
        "memory://",
        "--session-timeout-seconds",
        "4",
        "--emit-interval-seconds",
        "0.5",
        "--timeout",
        "120",
        "--json",
        str(path),
        "--work-dir",
        str(tmp_path / "work"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "churn-stream bench" in done.stdout and "worker / limit" in done.stdout

    data = orjson.loads(path.read_bytes())
    assert data["error"] is None
    assert data["machine"]["cores"] == os.cpu_count()
    assert data["machine"]["python"] == ".".join(map(str, sys.version_info[:3]))
    setup = data["setup"]
    assert setup["events"] == EVENTS
    assert 0 < setup["customers"] <= EVENTS
    assert (setup["partitions"], setup["workers"], setup["store"]) == (4, 1, "memory://")

    for phase in ("production", "limit", "worker"):
        assert data[phase]["events"] == EVENTS
        assert data[phase]["seconds"] > 0 and data[phase]["events_per_second"] > 0
    limit_cpu = data["limit"]["cpu_shares"]  # the consumer is this bench process
    assert list(limit_cpu) == ["bench", "broker"]
    assert limit_cpu["bench"] is not None and limit_cpu["bench"] > 0, limit_cpu
    worker = data["worker"]
    assert worker["ratio_to_limit"] > 0
    assert worker["verified"] is True and worker["differences"] == []
    assert 0 <= worker["read_seconds"] <= worker["seconds"]
    backlog_cpu = worker["cpu_shares"]
    assert list(backlog_cpu) == ["worker-0", "broker", "bench"]
    assert backlog_cpu["worker-0"] is not None and backlog_cpu["worker-0"] > 0, backlog_cpu
    assert "CPU meanwhile" in done.stdout

    latency = data["latency"]
    assert latency["markers"] > 0 and latency["achieved_rate"] > 0
    assert 0 <= latency["p50_seconds"] <= latency["p99_seconds"] <= latency["max_seconds"]
    stages = latency["stages"]  # from the worker's histograms, over the load only
    assert list(stages) == ["ingest", "customers", "segments", "flush"]
    for summary in stages.values():
        assert summary["count"] > 0
        assert 0 <= summary["p50_seconds"] <= summary["p99_seconds"]
    assert "by stage p50 / p99" in done.stdout
    shares = latency["cpu_shares"]  # the embedded broker's too: its pid is known
    assert list(shares) == ["worker-0", "broker", "bench"]
    assert all(share is not None and share >= 0 for share in shares.values()), shares
    assert shares["worker-0"] > 0, shares  # (100 events/s barely moves the other two)
    assert "CPU over the latency load" in done.stdout
    samples = latency["rss_samples_mb"]  # every 0.5 s of the load, and one at its end
    assert len(samples) >= 4, samples
    assert [t for t, _ in samples] == sorted(t for t, _ in samples)
    assert all(mb > 0 for _, mb in samples)
    trend = latency["rss_second_half"]
    assert 0 < trend["low_mb"] <= trend["high_mb"] and trend["slope_mb_per_minute"] is not None
    assert 0 < trend["seconds"] <= latency["seconds"]
    assert "RSS over its second half" in done.stdout
    assert data["memory"]["peak_rss_mb"] > 0

    recovery = data["recovery"]
    assert recovery["exit_codes"] == [0]
    assert (recovery["after"], recovery["local_tables"]) == ("sigterm", "kept")
    assert 0 < recovery["first_consumed_seconds"] <= recovery["seconds"]
