"""Bad input against ONE running worker (hypothesis, bounded examples): arbitrary bytes,
truncated and oversized JSON, wrong types, unknown types, naive timestamps, huge strings,
thousands of attributes, far past/future dates, duplicates, missing values and keys.

After every example: the worker is alive, /metrics answers, every consumed message is
accounted for (consumed = applied + duplicates + beyond retention + dead-lettered, from
the worker's own counters, per reason equal to the input contract), RSS stays bounded; at
the end the dead-letter topic holds exactly the dead-lettered messages with their reasons,
and segment labels stay capped."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import UTC, datetime

import orjson
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from stream.broker import create_topics, run_blocking, standard_topics
from stream.events import EventType
from stream.routing import InputRecord, route_batch
from tests.integration.kafka_io import (
    WorkerProcess,
    produce,
    read_all,
    reliability_settings,
    sample_sum,
)

MAX_SEGMENTS = 5
RSS_LIMIT = 700 * 1024 * 1024
EXAMPLES = 40

TYPES = [t.value for t in EventType]
ids = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF), min_size=1, max_size=24)
when = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2026, 3, 31), timezones=st.just(UTC)
)


@st.composite
def valid_events(draw):
    kind = draw(st.sampled_from(TYPES))
    event = {
        "event_id": draw(ids),
        "type": kind,
        "customer_id": draw(st.sampled_from([f"bad-input-customer-{i}" for i in range(30)])),
        "occurred_at": draw(when).isoformat(),
        "attributes": draw(
            st.dictionaries(
                st.sampled_from(["plan", "region", "other"]), ids, max_size=3
            )  # random dimension values exercise the segment cap
        ),
    }
    if kind in ("subscribed", "reactivated", "plan_changed", "renewed") and draw(st.booleans()):
        event["mrr"] = draw(st.floats(0, 1e6, allow_nan=False))
    if kind == "purchase":
        event["amount"] = draw(st.floats(0, 1e6, allow_nan=False))
    return event


def dumps(event) -> bytes:
    try:
        return orjson.dumps(event)
    except TypeError:  # integers beyond 64 bits: valid JSON that orjson cannot write
        return json.dumps(event, ensure_ascii=False).encode()


wrong_values = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.text(max_size=10),
)


@st.composite
def bad_messages(draw):
    event = draw(valid_events())
    kind = draw(
        st.sampled_from(
            [
                "bytes",
                "truncated",
                "oversized",
                "wrong_type",
                "unknown_type",
                "naive",
                "huge_string",
                "many_attributes",
                "far_past",
                "far_future",
                "non_finite",
                "empty",
                "valid",
                "valid",
            ]
        )
    )
    if kind == "bytes":
        return draw(st.binary(max_size=600))
    if kind == "truncated":
        raw = dumps(event)
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if kind == "oversized":
        return dumps(event | {"padding": "x" * draw(st.integers(64 * 1024, 400 * 1024))})
    if kind == "wrong_type":
        field = draw(st.sampled_from(["event_id", "type", "customer_id", "occurred_at", "mrr"]))
        return dumps(event | {field: draw(wrong_values)})
    if kind == "unknown_type":
        return dumps(event | {"type": draw(st.text(max_size=30).filter(lambda t: t not in TYPES))})
    if kind == "naive":
        return dumps(event | {"occurred_at": event["occurred_at"][:19]})
    if kind == "huge_string":
        field = draw(st.sampled_from(["event_id", "customer_id", "attribute"]))
        text = "é" * draw(st.integers(129, 30_000))
        if field == "attribute":
            return dumps(event | {"attributes": {"plan": text}})
        return dumps(event | {field: text})
    if kind == "many_attributes":
        count = draw(st.integers(33, 4000))
        return dumps(event | {"attributes": {f"k{i}": f"v{i}" for i in range(count)}})
    if kind == "far_past":
        year = draw(st.integers(1, 1999))
        return dumps(event | {"occurred_at": f"{year:04d}-06-01T00:00:00Z"})
    if kind == "far_future":
        year = draw(st.integers(2100, 9999))
        return dumps(event | {"occurred_at": f"{year:04d}-06-01T00:00:00+05:00"})
    if kind == "non_finite":
        return dumps(event)[:-1] + draw(st.sampled_from([b',"mrr":1e999}', b',"mrr":NaN}']))
    if kind == "empty":
        return draw(st.sampled_from([None, b"", b"null", b"[]", b"{}"]))
    return dumps(event)


keys = st.one_of(st.none(), st.binary(max_size=64), st.binary(min_size=2000, max_size=5000))


def classify(values: list[bytes | None], worker_settings) -> Counter:
    """What the input contract says each message is (reason, or 'valid')."""
    records = [InputRecord(0, offset, value) for offset, value in enumerate(values)]
    routed = route_batch(
        records,
        worker_settings.dimensions,
        worker_settings.partitions,
        now_ms=int(time.time() * 1000),
        max_future_ms=worker_settings.max_future_seconds * 1000,
    )
    expected = Counter(rejected.reason for rejected in routed.rejected)
    expected["valid"] = routed.valid
    return expected


def accounted(worker: WorkerProcess, sent: int, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        worker.assert_running()
        text = worker.scrape()
        consumed = sample_sum(text, "churn_consumed_messages_total")
        settled = (
            sample_sum(text, "churn_applied_events_total")
            + sample_sum(text, "churn_duplicate_events_total")
            + sample_sum(text, "churn_invalid_events_total")
            + sample_sum(text, "churn_beyond_retention_events_total")
        )
        if consumed == sent and settled == sent:
            return text
        time.sleep(0.3)
    raise AssertionError(f"{sent} sent, metrics:\n{_counters(text)}\n{worker.log_tail()}")


def _counters(text: str) -> str:
    return "\n".join(
        line for line in text.splitlines() if line.startswith("churn_") and "_total" in line
    )


def test_bad_input_never_stops_the_worker_and_every_message_is_accounted_for(
    broker, topic_prefix, tmp_path
):
    worker_settings = reliability_settings(
        topic_prefix,
        broker.url,
        tmp_path,
        max_future_seconds=365 * 86400,
        max_segments=MAX_SEGMENTS,
    )
    run_blocking(lambda: create_topics(broker.bootstrap, standard_topics(worker_settings)))
    worker = WorkerProcess(worker_settings, tmp_path / "worker.log").start()
    state = {"sent": 0, "expected": Counter(), "examples": 0}
    try:
        run_blocking(lambda: worker.wait_for_metrics())
        baseline = worker.rss_bytes()

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=(Phase.explicit, Phase.generate),  # no shrinking: bounded run time
            suppress_health_check=list(HealthCheck),
        )
        @given(
            st.lists(st.tuples(bad_messages(), keys), min_size=5, max_size=60),
            st.integers(0, 5),
        )
        def one_batch(messages, repeats):
            values = [value for value, _ in messages]
            values += [v for v in values if v is not None][:repeats]  # duplicates
            keyed = dict(zip(values, [key for _, key in messages], strict=False))
            asyncio.run(
                produce(
                    broker.bootstrap,
                    worker_settings.input_topic,
                    values,
                    # a message needs a key or a value: a null value gets a key
                    key_for=lambda value: keyed.get(value) or (None if value else b"k"),
                )
            )
            state["sent"] += len(values)
            state["expected"] += classify(values, worker_settings)
            state["examples"] += 1
            text = accounted(worker, state["sent"])
            for reason, count in state["expected"].items():
                if reason != "valid":
                    got = sample_sum_labels(text, "churn_invalid_events_total", reason=reason)
                    assert got == count, (reason, got, count)
            valid = sample_sum(text, "churn_applied_events_total") + sample_sum(
                text, "churn_duplicate_events_total"
            )
            assert valid == state["expected"]["valid"]
            assert worker.rss_bytes() < RSS_LIMIT

        one_batch()
        text = worker.scrape()
        worker.assert_running()
        rss = worker.rss_bytes()
        log = worker.log_text()
    finally:
        worker.stop()

    dead = run_blocking(lambda: read_all(broker.bootstrap, worker_settings.dlq_topic))
    invalid = sum(n for reason, n in state["expected"].items() if reason != "valid")
    assert len(dead) == invalid == sample_sum(text, "churn_invalid_events_total")
    reasons = Counter(orjson.loads(message.value)["reason"] for message in dead)
    assert reasons == state["expected"] - Counter({"valid": state["expected"]["valid"]})
    for message in dead:
        body = orjson.loads(message.value)
        assert body["source_topic"] == worker_settings.input_topic and body["detail"]
        assert len(message.value) < 300 * 1024  # dead letters are bounded too
    assert rss - baseline < 300 * 1024 * 1024, (baseline, rss)
    for dimension in worker_settings.dimensions:
        segments = _labels(text, "churn_active_customers", "segment", dimension=dimension)
        assert len(segments - {"other", "unknown"}) <= MAX_SEGMENTS, segments
    assert "Traceback" not in log and "Crashed" not in log
    print(
        f"{state['examples']} examples, {state['sent']} messages: {dict(state['expected'])}; "
        f"RSS {baseline / 2**20:.0f} -> {rss / 2**20:.0f} MiB"
    )


def sample_sum_labels(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def _labels(text: str, name: str, label: str, **where: str) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        sample.labels[label]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in where.items())
    }
