"""The pure parts of `churn-stream bench`: statistics, parsing, formatting, the workload."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from stream import bench, native
from stream.bench import (
    PLACEHOLDER,
    BenchResult,
    Expectation,
    ExpectationCounter,
    Latency,
    MarkerTracker,
    Memory,
    Rate,
    Recovery,
    Throughput,
)
from stream.settings import Settings

METRICS_TEXT = """\
# HELP churn_consumed_messages_total Input messages read by the ingest stage.
# TYPE churn_consumed_messages_total counter
churn_consumed_messages_total 1234.0
churn_consumed_messages_created 1.7e9
# HELP churn_events_total Valid events consumed, by type.
# TYPE churn_events_total counter
churn_events_total{type="purchase"} 10.0
churn_events_total{type="subscribed"} 5.0
# HELP churn_applied_events_total Events applied to a customer history.
# TYPE churn_applied_events_total counter
churn_applied_events_total 1200.0
"""


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.configure(parser)
    return parser.parse_args(list(argv))


def _plan(**overrides: object) -> bench.Plan:
    return dataclasses.replace(bench.plan_from(_parse("--json", "/tmp/x.json")), **overrides)


def _record(window: str, dimension: str, segment: str, **counts: float) -> dict[str, object]:
    record: dict[str, object] = dict.fromkeys(bench.COUNT_FIELDS, 0)
    record |= {
        "window": window,
        "dimension": dimension,
        "segment": segment,
        "window_start": "2026-01-01T00:00:00+00:00",
        "revision": 0,
        "final": False,
        "watermark": None,
        "churn_rate": None,
    }
    record.update(counts)
    return record


# --------------------------------------------------------------------------- statistics


def test_percentile_interpolates_between_ranks():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert bench.percentile(values, 0) == 1.0
    assert bench.percentile(values, 50) == 3.0
    assert bench.percentile(values, 100) == 5.0
    assert bench.percentile(values, 25) == 2.0
    assert bench.percentile([1.0, 2.0], 50) == pytest.approx(1.5)
    assert bench.percentile(list(map(float, range(1, 101))), 99) == pytest.approx(99.01)


def test_percentile_of_nothing_and_of_one_value():
    assert bench.percentile([], 99) is None
    assert bench.percentile([0.7], 99) == 0.7
    with pytest.raises(ValueError):
        bench.percentile([1.0], 101)


# --------------------------------------------------------------------------- parsing


def test_parse_metrics_sums_label_sets_and_keeps_sample_names():
    totals = bench.parse_metrics(METRICS_TEXT)
    assert totals["churn_consumed_messages_total"] == 1234.0
    assert totals["churn_applied_events_total"] == 1200.0
    assert totals["churn_events_total"] == 15.0


def test_sum_metrics_adds_workers():
    total = bench.sum_metrics([{"a_total": 1.0, "b": 2.0}, {"a_total": 3.0}])
    assert total == {"a_total": 4.0, "b": 2.0}


def test_status_kb_reads_proc_status_fields():
    status = "Name:\tpython\nVmPeak:\t  900 kB\nVmHWM:\t  524288 kB\nVmRSS:\t  1024 kB\n"
    assert bench.status_kb(status, "VmHWM") == 524288
    assert bench.status_kb(status, "VmRSS") == 1024
    assert bench.status_kb(status, "VmSwap") is None


def test_crash_reason_prefers_fausts_crash_line():
    log = (
        "[INFO] fine\n[ERROR] Crashed reason=ConsistencyError('x')\nTraceback\n"
        "RuntimeError: Event loop is closed\n"
    )
    assert bench.crash_reason(log) == "[ERROR] Crashed reason=ConsistencyError('x')"
    assert bench.crash_reason("a\nValueError: b\nc\n") == "ValueError: b"
    assert bench.crash_reason("all good\n") == ""


def test_rfc3339_ms_has_the_placeholder_length():
    stamp = bench.rfc3339_ms(datetime(2026, 3, 1, 12, 5, 7, 123999, tzinfo=UTC).timestamp())
    assert stamp == "2026-03-01T12:05:07.123Z"
    assert len(stamp.encode()) == len(PLACEHOLDER)


# --------------------------------------------------------------------------- the output


def test_reflects_all_needs_every_dimension_to_add_up():
    expectation = Expectation(events=100, customers=3, activated=3, purchases=4)
    latest = {
        "y/all": _record("year", "all", "all", new_customers=3, purchases=4),
        "y/plan/a": _record("year", "plan", "a", new_customers=2, purchases=1),
        "y/plan/b": _record("year", "plan", "b", new_customers=1, purchases=3),
        "m/all": _record("month", "all", "all", new_customers=99, purchases=99),
    }
    assert bench.year_totals(latest, "all") == (3, 4)
    assert bench.reflects_all(latest, expectation, ("plan",))
    assert not bench.reflects_all(latest, expectation, ("plan", "region"))
    latest["y/plan/b"] = _record("year", "plan", "b", new_customers=1, purchases=2)
    assert not bench.reflects_all(latest, expectation, ("plan",))


def test_record_differences_ignore_emission_fields_and_empty_records():
    actual = {"k": _record("day", "all", "all", purchases=2) | {"revision": 7, "final": True}}
    expected = {"k": _record("day", "all", "all", purchases=2), "z": _record("day", "all", "z")}
    assert bench.record_differences(actual, expected) == []
    expected["k"] = _record("day", "all", "all", purchases=3)
    assert bench.record_differences(actual, expected) == ["k.purchases: 2 != 3"]
    actual["only"] = _record("day", "all", "x", purchases=1)
    assert "only: only in actual" in bench.record_differences(actual, expected)


def test_record_differences_compare_floats_with_a_tolerance():
    left = {"k": _record("day", "all", "all", churn_rate=0.1 + 0.2)}
    right = {"k": _record("day", "all", "all", churn_rate=0.3)}
    assert bench.record_differences(left, right) == []


def test_output_digest_depends_on_metrics_only():
    records = {"k": _record("day", "all", "all", purchases=2)}
    emitted_again = {"k": records["k"] | {"revision": 3, "final": True, "watermark": "x"}}
    with_empty = records | {"e": _record("day", "all", "e")}
    digest = bench.output_digest(records)
    assert bench.output_digest(emitted_again) == digest
    assert bench.output_digest(with_empty) == digest
    assert bench.output_digest({"k": _record("day", "all", "all", purchases=1)}) != digest


# --------------------------------------------------------------------------- markers


def test_marker_tracker_reflects_in_order_and_bounds_the_rest():
    tracker = MarkerTracker()
    for wall in (10.0, 10.1, 10.2):
        tracker.add(wall)
    tracker.observe(1, 10.5)
    tracker.observe(1, 10.9)  # the same total again changes nothing
    assert tracker.pending == 2
    tracker.observe(5, 11.0)  # never more than were sent
    assert tracker.pending == 0
    assert tracker.latencies() == pytest.approx([0.5, 0.9, 0.8])
    tracker.add(12.0)
    assert tracker.latencies(3) == []
    assert tracker.latencies(3, now=15.0) == pytest.approx([3.0])


def test_marker_event_is_a_valid_purchase_of_the_marker_segment():
    from stream.decoding import decode_event

    event = bench.marker_event(401, 1_780_000_000.25, "plan")
    decoded = decode_event(orjson.dumps(event), ("plan", "region"))
    assert decoded.segment == (bench.MARKER_SEGMENT, None)
    assert decoded.customer_id == "bench-marker-000002"
    assert decoded.amount_micros == 1_000_000


# --------------------------------------------------------------------------- workload


def test_expectation_counter_counts_distinct_things():
    counter = ExpectationCounter()
    events = [
        {"customer_id": "a", "event_id": "a-1", "type": "subscribed"},
        {"customer_id": "a", "event_id": "a-2", "type": "purchase"},
        {"customer_id": "a", "event_id": "a-2", "type": "purchase"},  # duplicate
        {"customer_id": "b", "event_id": "b-1", "type": "activity"},
        {"customer_id": "c", "event_id": "c-1", "type": "reactivated"},
    ]
    for event in events:
        counter.add(event)
    assert counter.result() == Expectation(events=5, customers=3, activated=2, purchases=1)


def test_build_workload_produces_exactly_n_valid_events():
    plan = _plan(events=3000, seed=3)
    workload = bench.build_workload(plan, partitions=4)
    assert len(workload.payloads) == 3000
    assert workload.expectation.events == 3000
    assert workload.customers == 300
    assert 0 < workload.expectation.customers <= 300
    from stream.decoding import decode_event

    for partition, key, value in workload.payloads[:200]:
        event = decode_event(value, ("plan", "region"))
        assert key == event.customer_id.encode()
        assert partition == bench.partition_of(key, 4)


def test_build_load_templates_carry_the_placeholder_and_fresh_ids():
    templates = bench.build_load(_plan(), partitions=4, count=500)
    assert len(templates) == 500
    for _, key, value in templates:
        assert PLACEHOLDER in value
        assert key.startswith(b"load-")
        assert b'"event_id":"load-' in value


def test_auto_customers_is_bounded():
    assert bench.auto_customers(1_000_000) == 100_000
    assert bench.auto_customers(50_000_000) == bench.MAX_AUTO_CUSTOMERS
    assert bench.auto_customers(3) == 1


# --------------------------------------------------------------------------- results


def _result() -> BenchResult:
    limit = Rate(100_000, 0.5)
    return BenchResult(
        setup=bench.describe_setup(
            _plan(events=1000), Settings(dimensions=("plan",)), None, "kafka://h:1"
        ),
        machine=bench.machine_info(),
        production=Rate(100_000, 0.25),
        limit=limit,
        worker=Throughput(Rate(100_000, 10.0), 4.0, 1.0, 8.0, 42, "abc", verified=True),
        latency=Latency(20_000, 600_000, 30.0, [0.5, 0.7, 1.5], 0, 300.0, 310.0),
        memory=Memory([300.5, None], [290.0, None]),
        recovery=Recovery(12.5, 1.0, [0], 0.5, 11.0, 280.0),
    )


def test_result_json_has_every_field():
    data = bench.result_json(_result())
    assert data["machine"]["cores"] >= 1 and data["machine"]["python"]
    assert data["machine"]["compiled_modules"] == list(native.compiled_sources())
    assert data["production"]["events_per_second"] == 400_000
    assert data["limit"]["events_per_second"] == 200_000
    assert data["worker"]["events_per_second"] == 10_000
    assert data["worker"]["ratio_to_limit"] == 0.05
    assert data["worker"]["verified"] is True
    assert data["latency"]["p50_seconds"] == 0.7
    assert data["latency"]["achieved_rate"] == 20_000
    assert data["latency"]["lower_bound"] is False
    assert data["memory"]["peak_rss_mb"] == 300.5
    assert data["recovery"]["seconds"] == 12.5
    assert data["error"] is None
    for name in ("events", "customers", "partitions", "workers", "store"):
        assert name in data["setup"]
    orjson.dumps(data)  # JSON-ready


def test_format_table_shows_each_figure_once():
    table = bench.format_table(bench.result_json(_result()))
    assert "worker / limit" in table and "5.0 %" in table
    assert "10,000 events/s" in table
    assert "0.70 s / 1.48 s" in table
    assert "300 MB" in table
    assert "300 -> 310 MB" in table
    assert "1.00 s / 8.00 s / 10.00 s" in table
    assert "12.50 s (after SIGTERM, local tables kept)" in table
    assert "exact" in table
    compiled = ", ".join(native.compiled_sources()) or "none"
    assert f"compiled with mypyc               {compiled}" in table


def test_format_table_of_skipped_phases_and_failures():
    result = BenchResult(setup=_result().setup, machine=bench.machine_info())
    result.error = "recovery phase failed: worker exited with 1\nlong log"
    table = bench.format_table(bench.result_json(result))
    assert table.count("skipped") >= 4
    assert "FAILED" in table and "long log" not in table


def test_default_json_path_is_timestamped():
    path = bench.default_json_path(datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC))
    assert path == Path("bench-results/bench-20260301T120000Z.json")


def test_write_json_creates_the_directory(tmp_path):
    path = tmp_path / "a" / "b.json"
    bench.write_json(path, {"x": 1})
    assert orjson.loads(path.read_bytes()) == {"x": 1}


# --------------------------------------------------------------------------- the command


def test_flags_make_every_phase_optional():
    plan = bench.plan_from(
        _parse("--events", "20000", "--latency-seconds", "5", "--skip-recovery", "--skip-limit")
    )
    assert plan.events == 20_000 and plan.latency_seconds == 5
    assert not plan.recovery and not plan.limit and not plan.verify
    assert plan.workers == 1 and plan.rate == 20_000
    assert plan.json_path.parent == Path("bench-results")


def test_bench_defaults_rocksdb_dimensions_and_quiet_logs(monkeypatch):
    for name in ("CHURN_STORE", "CHURN_DIMENSIONS", "CHURN_LOG_LEVEL", "CHURN_PARTITIONS"):
        monkeypatch.delenv(name, raising=False)
    settings = bench.bench_settings(_parse())
    assert settings.store == "rocksdb://"
    assert settings.dimensions == ("plan", "region")
    assert settings.log_level == "warning"
    assert settings.partitions == 4
    chosen = bench.bench_settings(_parse("--store", "memory://", "--partitions", "8"))
    assert chosen.store == "memory://" and chosen.partitions == 8


def test_settings_env_replaces_churn_variables(monkeypatch, tmp_path):
    monkeypatch.delenv("CHURN_GRACE_SECONDS", raising=False)
    settings = Settings(dimensions=("plan", "region"), data_dir=tmp_path, metrics_port=1234)
    monkeypatch.setenv("CHURN_GRACE_SECONDS", "5")  # the bench's own environment
    env = bench.settings_env(settings)
    assert env["CHURN_DIMENSIONS"] == "plan,region"
    assert env["CHURN_DATA_DIR"] == str(tmp_path)
    assert env["CHURN_METRICS_PORT"] == "1234"
    assert env["CHURN_GRACE_SECONDS"] == "3600"
    assert "CHURN_SASL_PASSWORD" not in env


def test_worker_settings_share_a_group_and_nothing_else(tmp_path):
    workers = bench.worker_settings(Settings(), "r1", tmp_path, 2)
    assert {s.app_id for s in workers} == {"bench-r1"}
    assert {s.input_topic for s in workers} == {"bench-r1-events"}
    assert len({s.metrics_port for s in workers}) == 2
    assert len({s.data_dir for s in workers}) == 2
    assert {s.group_instance_id for s in workers} == {None}


def test_each_bench_worker_gets_its_own_static_member_name(tmp_path):
    workers = bench.worker_settings(Settings(group_instance_id="w"), "r1", tmp_path, 2)
    assert [s.group_instance_id for s in workers] == ["w-0", "w-1"]


def test_quiet_seconds_follow_the_emit_interval():
    assert bench.quiet_seconds(_plan(), Settings(emit_interval_seconds=1.0)) == 3.0
    assert bench.quiet_seconds(_plan(), Settings(emit_interval_seconds=0.2)) == 2.0
    assert bench.quiet_seconds(_plan(quiet_seconds=0.5), Settings()) == 0.5


def test_recovery_after_sigkill_is_a_flag_and_the_log_tells_what_became_of_the_tables(
    tmp_path,
):
    assert bench.plan_from(_parse()).recovery_after == "sigterm"
    assert bench.plan_from(_parse("--recovery-after", "sigkill")).recovery_after == "sigkill"
    worker = bench.WorkerProcess(Settings(), tmp_path / "worker.log")
    worker.log_path.write_bytes(
        bench.START_LINE + b"WARNING previous run did not stop cleanly: discarding the local "
        b"tables in /d; they are restored from their changelog topics\n" + bench.START_LINE
    )
    assert bench._local_tables([worker]) == "kept"  # the last start discarded nothing
    with worker.log_path.open("ab") as log:
        log.write(b"WARNING previous run did not stop cleanly: discarding the local tables\n")
    assert bench._local_tables([worker]) == "discarded"


HISTOGRAM_TEXT = """\
# HELP churn_stage_latency_seconds Seconds from a message's Kafka timestamp.
# TYPE churn_stage_latency_seconds histogram
churn_stage_latency_seconds_bucket{le="0.5",stage="ingest"} 2.0
churn_stage_latency_seconds_bucket{le="1.0",stage="ingest"} 6.0
churn_stage_latency_seconds_bucket{le="+Inf",stage="ingest"} 6.0
churn_stage_latency_seconds_count{stage="ingest"} 6.0
churn_stage_latency_seconds_sum{stage="ingest"} 3.5
churn_stage_latency_seconds_bucket{le="0.5",stage="customers"} 0.0
churn_stage_latency_seconds_bucket{le="1.0",stage="customers"} 0.0
churn_stage_latency_seconds_bucket{le="+Inf",stage="customers"} 3.0
churn_stage_latency_seconds_count{stage="customers"} 3.0
churn_stage_latency_seconds_sum{stage="customers"} 9.0
# HELP churn_flush_seconds Duration of each segment flush.
# TYPE churn_flush_seconds histogram
churn_flush_seconds_bucket{le="0.5"} 4.0
churn_flush_seconds_bucket{le="1.0"} 4.0
churn_flush_seconds_bucket{le="+Inf"} 4.0
churn_flush_seconds_count 4.0
churn_flush_seconds_sum 1.0
"""
INF = float("inf")


def test_parse_histograms_keeps_each_stage_and_bound():
    stages = bench.parse_histograms(HISTOGRAM_TEXT, "churn_stage_latency_seconds", "stage")
    assert stages == {
        "ingest": {0.5: 2.0, 1.0: 6.0, INF: 6.0},
        "customers": {0.5: 0.0, 1.0: 0.0, INF: 3.0},
    }
    assert bench.parse_histograms(HISTOGRAM_TEXT, "churn_flush_seconds") == {
        "": {0.5: 4.0, 1.0: 4.0, INF: 4.0}
    }
    assert bench.parse_histograms(METRICS_TEXT, "churn_flush_seconds") == {}


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, {1.0: 10.0, INF: 10.0}, 0.5),  # the first bucket starts at 0
        (0.5, {0.5: 2.0, 1.0: 6.0, INF: 6.0}, 0.625),  # rank 3: a quarter into (0.5, 1]
        (1.0, {0.5: 2.0, 1.0: 6.0, INF: 6.0}, 1.0),
        (0.0, {0.5: 2.0, 1.0: 6.0, INF: 6.0}, 0.0),
        (0.99, {0.5: 0.0, 1.0: 0.0, INF: 3.0}, 1.0),  # in +Inf: the highest finite bound
        (0.5, {0.5: 0.0, INF: 0.0}, None),  # nothing observed
        (0.5, {}, None),
    ],
)
def test_histogram_quantile_interpolates_like_prometheus(q, buckets, expected):
    assert bench.histogram_quantile(q, buckets) == expected


def test_histogram_quantile_rejects_a_percentage():
    with pytest.raises(ValueError, match="between 0 and 1"):
        bench.histogram_quantile(99, {1.0: 1.0, INF: 1.0})


def test_stage_summaries_count_what_was_observed_between_two_scrapes():
    before = {"ingest": {0.5: 2.0, 1.0: 2.0, INF: 2.0}, "flush": {0.5: 1.0, INF: 1.0}}
    after = {
        "flush": {0.5: 5.0, INF: 5.0},
        "segments": {0.5: 0.0, INF: 0.0},
        "ingest": {0.5: 2.0, 1.0: 6.0, INF: 6.0},
    }
    summaries = bench.stage_summaries(before, after)
    assert list(summaries) == ["ingest", "segments", "flush"]  # pipeline order
    assert summaries["ingest"]["count"] == 4.0  # 2 below 0.5 s before, none since
    assert summaries["ingest"]["p50_seconds"] == 0.75  # all 4 in (0.5, 1]: rank 2 of 4
    assert summaries["segments"] == {"count": 0.0, "p50_seconds": None, "p99_seconds": None}
    assert summaries["flush"]["count"] == 4.0


def test_the_table_shows_the_stages_when_measured():
    result = _result()
    result.latency.stages = bench.stage_summaries(
        {}, {"ingest": {1.0: 0.0, 2.0: 100.0, INF: 100.0}, "flush": {1.0: 4.0, INF: 4.0}}
    )
    table = bench.format_table(bench.result_json(result))
    assert "by stage p50 / p99" in table
    assert "ingest 1.50 s / 1.99 s, flush 0.50 s / 0.99 s" in table
    assert "by stage" not in bench.format_table(bench.result_json(_result()))


@pytest.mark.parametrize(
    ("before", "after", "seconds", "expected"),
    [
        ({"broker": 10.0}, {"broker": 25.0}, 30.0, {"broker": 0.5}),
        (
            {"worker-0": 1.0, "bench": 2.0},
            {"worker-0": 3.0, "bench": 2.5},
            2.0,
            {"worker-0": 1.0, "bench": 0.25},
        ),
        ({"broker": None}, {"broker": 3.0}, 10.0, {"broker": None}),  # no embedded broker
        ({"worker-0": 1.0}, {"worker-0": None}, 10.0, {"worker-0": None}),  # gone meanwhile
        ({}, {"worker-1": 4.0}, 10.0, {"worker-1": None}),
        ({"bench": 1.0}, {"bench": 2.0}, 0.0, {"bench": None}),
    ],
)
def test_cpu_shares_are_cpu_seconds_per_second_of_the_load(before, after, seconds, expected):
    assert bench.cpu_shares(before, after, seconds) == expected


def test_cpu_seconds_of_this_process_grow_with_work():
    start = bench.cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))
    assert bench.cpu_seconds(os.getpid()) > start >= 0
    with pytest.raises(OSError):
        bench.cpu_seconds(2**22 + 1)  # above Linux's pid_max: no such process


def test_cpu_seconds_see_a_millisecond_of_work():
    # /proc/<pid>/stat counts 10 ms ticks: a short bench phase read 0.0 there (CI, 2026-12-06).
    spent = []
    for _ in range(20):
        start = bench.cpu_seconds(os.getpid())
        busy_until = time.thread_time() + 0.001
        while time.thread_time() < busy_until:
            pass
        spent.append(bench.cpu_seconds(os.getpid()) - start)
    assert all(0.001 <= seconds < 0.5 for seconds in spent), spent


def test_cpu_seconds_of_another_process_until_it_is_gone():
    child = subprocess.Popen(
        [sys.executable, "-c", "sum(range(10_000_000)); input()"], stdin=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while bench.cpu_seconds(child.pid) < 0.05 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bench.cpu_seconds(child.pid) >= 0.05
    finally:
        child.communicate(b"\n", timeout=30)
    with pytest.raises(OSError):
        bench.cpu_seconds(child.pid)  # reaped


def test_the_table_shows_each_process_cpu_over_the_latency_load():
    result = _result()
    result.latency.cpu_shares = {"worker-0": 0.553, "broker": 0.48, "bench": None}
    data = bench.result_json(result)
    assert data["latency"]["cpu_shares"] == {"worker-0": 0.553, "broker": 0.48, "bench": None}
    table = bench.format_table(data)
    assert "CPU over the latency load" in table
    assert "worker-0 55 %, broker 48 %, bench - of a core" in table
    assert "CPU over" not in bench.format_table(bench.result_json(_result()))


def test_the_table_shows_each_process_cpu_over_the_backlog():
    result = _result()
    assert result.worker is not None
    result.worker.cpu_shares = {"worker-0": 0.912, "worker-1": 0.874, "broker": 0.25}
    data = bench.result_json(result)
    assert data["worker"]["cpu_shares"] == {"worker-0": 0.912, "worker-1": 0.874, "broker": 0.25}
    table = bench.format_table(data)
    assert "CPU meanwhile  " in table
    assert "worker-0 91 %, worker-1 87 %, broker 25 % of a core" in table
    assert "CPU meanwhile" not in bench.format_table(bench.result_json(_result()))


def test_the_limit_reports_the_cpu_of_the_consumer_and_the_broker():
    result = _result()
    result.limit = Rate(100_000, 0.5, {"bench": 0.963, "broker": 0.052})
    data = bench.result_json(result)
    assert data["limit"]["cpu_shares"] == {"bench": 0.963, "broker": 0.052}
    assert "bench 96 %, broker 5 % of a core" in bench.format_table(data)
    assert "cpu_shares" not in bench.result_json(_result())["limit"]


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([], {"seconds": None, "low_mb": None, "high_mb": None, "slope_mb_per_minute": None}),
        (
            [(0.0, 300.0)],
            {"seconds": 0.0, "low_mb": 300.0, "high_mb": 300.0, "slope_mb_per_minute": None},
        ),
        # flat second half: what the first half did does not count
        (
            [(0.0, 100.0), (60.0, 400.0), (120.0, 400.0)],
            {"seconds": 60.0, "low_mb": 400.0, "high_mb": 400.0, "slope_mb_per_minute": 0.0},
        ),
        # one MB a second: 60 MB a minute
        (
            [(0.0, 0.0), (10.0, 10.0), (20.0, 20.0), (30.0, 30.0)],
            {"seconds": 10.0, "low_mb": 20.0, "high_mb": 30.0, "slope_mb_per_minute": 60.0},
        ),
        # a sawtooth without a trend
        (
            [(t, 450.0 + (10.0 if i % 2 else 0.0)) for i, t in enumerate(range(0, 600, 10))]
            + [(600.0, 450.0)],
            {"seconds": 300.0, "low_mb": 450.0, "high_mb": 460.0, "slope_mb_per_minute": 0.0},
        ),
        # shrinking
        (
            [(0.0, 500.0), (30.0, 500.0), (60.0, 480.0), (90.0, 470.0)],
            {"seconds": 30.0, "low_mb": 470.0, "high_mb": 480.0, "slope_mb_per_minute": -20.0},
        ),
    ],
)
def test_rss_trend_covers_the_second_half_of_the_load(samples, expected):
    assert bench.rss_trend(samples) == expected


@pytest.mark.parametrize(
    ("seconds", "interval"), [(600.0, 10.0), (30.0, 0.5), (6.0, 0.5), (120.0, 2.0)]
)
def test_rss_is_sampled_about_sixty_times_a_load(seconds, interval):
    assert bench.rss_sample_interval(seconds) == interval


def test_the_table_shows_the_rss_trend_of_the_second_half():
    result = _result()
    assert result.latency is not None
    result.latency.rss_samples = [(0.0, 300.0), (10.0, 305.0), (20.0, 306.0), (30.0, 310.0)]
    data = bench.result_json(result)
    assert data["latency"]["rss_samples_mb"] == [
        [0.0, 300.0],
        [10.0, 305.0],
        [20.0, 306.0],
        [30.0, 310.0],
    ]
    assert data["latency"]["rss_second_half"]["slope_mb_per_minute"] == 24.0
    table = bench.format_table(data)
    row = next(line for line in table.splitlines() if "RSS over its second half" in line)
    assert row.endswith("  306-310 MB, +24.0 MB a minute over 10 s (4 samples in all)")
    assert "second half" not in bench.format_table(bench.result_json(_result()))


class _FakeConsumer:
    """Serves `values` in getmany calls, recording each call's max_records."""

    def __init__(self, values: list[bytes]) -> None:
        self.values = values
        self.asked: list[int | None] = []

    async def getmany(self, timeout_ms: int, max_records: int | None = None) -> dict:
        self.asked.append(max_records)
        taken, self.values = self.values[:max_records], self.values[max_records:]
        return {"tp": [dataclasses.make_dataclass("M", ["value"])(v) for v in taken]}


def test_the_limit_reads_in_kafkas_default_poll_size_and_decodes_every_value():
    values = [orjson.dumps({"n": i}) for i in range(1200)]
    consumer = _FakeConsumer(values)
    rate = asyncio.run(bench.read_all(consumer, len(values), timeout=10.0))
    assert rate.events == 1200
    assert consumer.asked == [500, 500, 500]  # 500: max.poll.records
    assert bench.LIMIT_MAX_RECORDS == 500
    setup = bench.describe_setup(_plan(events=10), Settings(), None, "kafka://h:1")
    assert setup["limit_max_records"] == 500
    broken = _FakeConsumer([b"{not json"])
    with pytest.raises(orjson.JSONDecodeError):
        asyncio.run(bench.read_all(broken, 1, timeout=10.0))
