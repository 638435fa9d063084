"""The alerting stack end to end, and the Grafana dashboard against real data.

One run (module scope, shared by every test here) on the session's embedded broker:

    churn-stream simulate --spike 2026-03-19:3:10:plan=basic   (a subprocess, unthrottled)
      -> a `churn-stream worker` process (dimensions plan, region)
      -> the Debian Prometheus scraping it every second with deploy/prometheus/rules/*.yml
         (the shipped files, unchanged: ChurnSpike and ChurnSpikeCritical have no `for:`)
      -> the Debian Alertmanager with deploy/alertmanager/alertmanager.yml, changed in two
         ways only: its webhook URLs point at a receiver started here (same paths, so the
         severity routing is checked) and `group_wait` is 1 s instead of 10 s / 30 s;
         grouping, routes and inhibition are the shipped ones
      -> that receiver, which must get ChurnSpike or ChurnSpikeCritical for plan=basic.

The history: 4,000 customers from 2025-12-15 for 97 days (to the end of 2026-03-21; 14 days
of warm-up and more, and every window kind, year and quarter included, has customers at its
start), churn x10 for the basic plan in its last three days, so the spike is the open day
and the alerts keep firing while the tests look. Plus a few invalid messages, so that the
dead-letter panels have data. The same run must put a `firing` record for plan=basic on
`churn-alerts`, and no plan other than basic may alert anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from stream.broker import EmbeddedBroker, create_topics, free_port, standard_topics
from stream.settings import Settings
from stream.spikes import SpikeAlert
from tests.deploy.prometheus_stack import PrometheusStack, StackError, WebhookReceiver
from tests.deploy.promql import DEPLOY, RULE_FILES
from tests.deploy.test_grafana import DASHBOARD, PANELS, VARIABLES
from tests.integration.kafka_io import (
    WorkerProcess,
    produce,
    read_all,
    sample_sum,
    settings_env,
)

SPIKE_START = datetime(2026, 3, 19, tzinfo=UTC)
SPIKE_END = datetime(2026, 3, 22, tzinfo=UTC)  # exclusive: the end of the history
SIMULATION = [
    "--customers",
    "4000",
    "--start",
    "2025-12-15",
    "--days",
    "97",
    "--seed",
    "11",
    "--spike",
    "2026-03-19:3:10:plan=basic",
    "--duplicates",
    "0.02",
    "--out-of-order",
    "0.02",
    "--rate",
    "0",  # unthrottled: the history is bounded by --days
]
SPIKED = ("plan", "basic")
QUIET_PLANS = ("free", "pro", "enterprise")
INVALID = [b"not json", b'{"event_id": "x1", "type": "churned", "customer_id": "c1"}']
SPIKE_ALERTS = ("ChurnSpike", "ChurnSpikeCritical")
ROUTE_OF_SEVERITY = {"critical": "/alerts/critical", "warning": "/alerts/warning"}

SETTLE_TIMEOUT_S = 300.0  # the worker applies ~140,000 events; 2 cores shared with others
ALERT_TIMEOUT_S = 90.0
# "Settled" means the gauges stood still for 3 s, but the segment stage can still be
# writing its backlog's table changes for tens of seconds (measured: >30 s on a loaded
# machine) before it applies the last days: wait for the score that long.
SPIKE_SCORE_TIMEOUT_S = 240.0


@dataclass
class Run:
    stack: PrometheusStack
    webhook: WebhookReceiver
    worker: WorkerProcess
    alerts: list[SpikeAlert]  # churn-alerts, in topic order per partition
    keys: list[str]


def alertmanager_config(webhook_base: str) -> dict[str, Any]:
    """The shipped Alertmanager configuration, its receivers at `webhook_base` (same paths)
    and its group waits cut to 1 s."""
    config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = webhook_base + urllib.parse.urlsplit(hook["url"]).path
    routes = [config["route"], *config["route"].get("routes", [])]
    for route in routes:
        if "group_wait" in route or route is config["route"]:
            route["group_wait"] = "1s"
    return config


def _settings(prefix: str, broker: EmbeddedBroker, tmp_path: Path) -> Settings:
    return Settings(
        broker=broker.url,
        app_id=f"{prefix}app",
        input_topic=f"{prefix}events",
        output_topic=f"{prefix}metrics",
        dlq_topic=f"{prefix}dlq",
        alert_topic=f"{prefix}alerts",
        dimensions=("plan", "region"),
        metrics_port=free_port(),
        data_dir=tmp_path / "data",
        emit_interval_seconds=0.5,
        session_timeout_seconds=6,
        max_future_seconds=10**9,
    )


async def _simulate(settings: Settings) -> int:
    """`churn-stream simulate` as a process; the number of events it sent."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stream.cli",
        "simulate",
        *SIMULATION,
        env=settings_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=180)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    match = re.search(r"simulate: (\d+) events sent", text)
    assert match, text
    return int(match[1])


def _window_state(metrics_text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every per-segment sample of a scrape (window gauges, active customers, spike scores)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name.startswith("churn_") and "segment" in sample.labels
    }


async def _settle(worker: WorkerProcess, sent: int, timeout: float) -> None:
    """Until the worker has applied (or dropped as duplicates) every valid event and its
    per-segment gauges have stopped moving for 3 s."""
    deadline = time.monotonic() + timeout
    previous: dict[Any, float] = {}
    steady_since = time.monotonic()
    while time.monotonic() < deadline:
        worker.assert_running()
        text = worker.scrape()
        done = sample_sum(text, "churn_applied_events_total") + sample_sum(
            text, "churn_duplicate_events_total"
        )
        state = _window_state(text)
        if done < sent or state != previous:
            previous, steady_since = state, time.monotonic()
        elif time.monotonic() - steady_since >= 3.0:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"the worker did not settle in {timeout} s\n{worker.log_tail()}")


def _spike_notifications(webhook: WebhookReceiver) -> list[tuple[str, dict[str, Any]]]:
    """(route path, alert) of every spike alert the receiver was notified of."""
    return [
        (path, alert)
        for path, body in webhook.notifications()
        for alert in body.get("alerts", [])
        if alert["labels"].get("alertname") in SPIKE_ALERTS
    ]


def _spiked(labels: dict[str, Any]) -> bool:
    return (labels.get("dimension"), labels.get("segment")) == SPIKED


async def _wait_for_notification(webhook: WebhookReceiver, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(
            _spiked(alert["labels"]) and alert["status"] == "firing"
            for _, alert in _spike_notifications(webhook)
        ):
            return
        await asyncio.sleep(0.5)


async def _wait_for_spike_score(prometheus: PrometheusStack, worker: WorkerProcess) -> None:
    try:
        await asyncio.to_thread(
            prometheus.wait_for,
            'segment:churn_spike_score:max{dimension="plan", segment="basic"} >= 4',
            timeout=SPIKE_SCORE_TIMEOUT_S,
        )
    except StackError as error:
        scores = [
            line
            for line in worker.scrape().splitlines()
            if "churn_spike_score{" in line
            or 'segment="basic",window="day"' in line
            or line.startswith("churn_watermark")
        ]
        raise AssertionError(
            f"{error}\n--- the worker's spike scores\n" + "\n".join(scores) + "\n"
            f"--- worker log\n{worker.log_tail()}"
        ) from error


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def run(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Run]:
    tmp_path = tmp_path_factory.mktemp("alerting-stack")
    prefix = f"it-{uuid.uuid4().hex[:12]}-"
    settings = _settings(prefix, broker, tmp_path)
    await create_topics(broker.bootstrap, standard_topics(settings))
    target = f"{settings.metrics_host}:{settings.metrics_port}"
    with contextlib.ExitStack() as stack:
        webhook = stack.enter_context(WebhookReceiver())
        prometheus = stack.enter_context(
            PrometheusStack(
                targets={"churn-stream": [target]},
                rule_files=RULE_FILES,
                alertmanager=True,
                alertmanager_config=alertmanager_config(webhook.url),
            )
        )
        worker = WorkerProcess(settings, tmp_path / "worker.log").start()
        stack.callback(worker.stop)
        await worker.wait_for_metrics()
        sent = await _simulate(settings)
        await produce(broker.bootstrap, settings.input_topic, INVALID)
        await _settle(worker, sent, SETTLE_TIMEOUT_S)
        await _wait_for_spike_score(prometheus, worker)
        await _wait_for_notification(webhook, ALERT_TIMEOUT_S)
        messages = await read_all(broker.bootstrap, settings.alert_topic)
        worker.assert_running()
        yield Run(
            stack=prometheus,
            webhook=webhook,
            worker=worker,
            alerts=[SpikeAlert.model_validate_json(message.value) for message in messages],
            keys=[message.key.decode() for message in messages],
        )


# --------------------------------------------------------------------------- alerts


def test_the_spike_pages_through_prometheus_and_alertmanager(run):
    firing = [
        (path, alert)
        for path, alert in _spike_notifications(run.webhook)
        if _spiked(alert["labels"]) and alert["status"] == "firing"
    ]
    assert firing, (
        f"no spike notification for plan=basic: {run.webhook.notifications()}\n"
        f"{run.stack.logs()}\n{run.worker.log_tail()}"
    )
    for path, alert in firing:
        labels = alert["labels"]
        assert labels["window"] in {"day", "rolling_7d"}
        assert path == ROUTE_OF_SEVERITY[labels["severity"]], (path, labels)
        assert "plan=basic" in alert["annotations"]["summary"]
    # Prometheus agrees: the spiked plan's alert is firing now.
    firing_now = run.stack.query(
        'ALERTS{alertname=~"ChurnSpike|ChurnSpikeCritical", alertstate="firing",'
        ' dimension="plan", segment="basic"}'
    )
    assert firing_now
    # Nothing but spike alerts reached the receiver: the processor stayed healthy.
    names = {
        alert["labels"]["alertname"]
        for _, body in run.webhook.notifications()
        for alert in body.get("alerts", [])
    }
    assert names <= set(SPIKE_ALERTS)


def test_the_spike_is_published_on_churn_alerts(run):
    assert all(key == alert.key for key, alert in zip(run.keys, run.alerts, strict=True))
    firing = [
        alert
        for alert in run.alerts
        if (alert.dimension, alert.segment) == SPIKED and alert.status == "firing"
    ]
    assert firing, f"no firing record for plan=basic among {run.alerts}"
    for alert in firing:
        assert SPIKE_START <= alert.first_seen < SPIKE_END
        assert alert.score >= 4.0 and alert.observed > alert.expected
    # Seen on the spike's first day, although the worker read the backlog unevenly across
    # partitions (a day is scored as finished only once all of its events are applied).
    first_day = [alert for alert in firing if alert.window == "day"]
    assert first_day and min(alert.day for alert in first_day) == SPIKE_START, firing
    # Nothing alerted before the spike began, in any segment, and nothing resolved: the
    # history ends inside the spike.
    assert all(alert.first_seen >= SPIKE_START for alert in run.alerts), run.alerts
    assert all(alert.status == "firing" for alert in run.alerts)


def test_plans_without_a_spike_do_not_alert(run):
    quiet = [
        alert for alert in run.alerts if alert.dimension == "plan" and alert.segment in QUIET_PLANS
    ]
    assert quiet == []
    notified = [a["labels"] for _, a in _spike_notifications(run.webhook)]
    assert [labels for labels in notified if labels.get("segment") in QUIET_PLANS] == []
    # Their scores were seen all along and never came near the threshold.
    peaks = run.stack.query(
        'max_over_time(segment:churn_spike_score:max{dimension="plan", segment!="basic"}[1h])'
    )
    assert {(p["metric"]["window"], p["metric"]["segment"]) for p in peaks} == {
        (window, plan) for window in ("day", "rolling_7d") for plan in QUIET_PLANS
    }
    assert all(float(p["value"][1]) < 4.0 for p in peaks), peaks
    ever_alerted = run.stack.query(
        'count_over_time(ALERTS{alertname=~"ChurnSpike.*", dimension="plan", segment!="basic"}[1h])'
    )
    assert ever_alerted == []


def _series(sample: dict[str, Any]) -> tuple[str, str, str]:
    labels = sample["metric"]
    return labels["window"], labels["dimension"], labels["segment"]


def test_mrr_movements_add_up_in_prometheus(run):
    """What the new dashboard panels show: end = start + gains - losses, in every series."""
    movements = run.stack.query(
        "segment:churn_mrr_start:max + segment:churn_new_mrr:max"
        " + segment:churn_expansion_mrr:max + segment:churn_reactivation_mrr:max"
        " - segment:churn_contraction_mrr:max - segment:churn_churned_mrr:max"
    )
    ends = {
        _series(sample): float(sample["value"][1])
        for sample in run.stack.query("segment:churn_mrr_end:max")
    }
    assert len(movements) == len(ends) >= 8 * 8  # window kinds x (all, plans, regions)
    for sample in movements:
        series = _series(sample)
        assert float(sample["value"][1]) == pytest.approx(ends[series], abs=1e-6), series
    gained = run.stack.values('segment:churn_new_mrr:max{window="month", dimension="all"}')
    lost = run.stack.values('segment:churn_churned_mrr:max{window="month", dimension="all"}')
    assert gained[0] > 0 and lost[0] > 0


# --------------------------------------------------------------------------- the dashboard

WINDOWS = VARIABLES["window"]["query"].split(",")
# What Grafana substitutes: the run's spiked segment, and fixed intervals (1 s scrapes).
SUBSTITUTIONS = {
    "dimension": SPIKED[0],
    "segment": SPIKED[1],
    "__interval": "15s",
    "__interval_ms": "15000",
    "__rate_interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
# (panel title, refId) -> why that query may return nothing in this run. None today.
EMPTY_FOR_A_REASON: dict[tuple[str, str], str] = {}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"^label_values\((?P<metric>.+),\s*(?P<label>\w+)\)$")


def substitute(expr: str, values: dict[str, str]) -> str:
    """`expr` with Grafana's $name, ${name}, ${name:format} and [[name]] replaced."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        assert name in values, f"no value for ${name} in {expr!r}"
        return values[name]

    return _VARIABLE.sub(value, expr)


def _targets() -> list[Any]:
    return [
        pytest.param(panel["title"], target, id=f"{panel['title']}/{target['refId']}")
        for panel in PANELS
        for target in panel["targets"]
    ]


@pytest.mark.parametrize(("title", "target"), _targets())
def test_every_panel_query_returns_data(run, title, target):
    used = {name for groups in _VARIABLE.findall(target["expr"]) for name in groups if name}
    windows = WINDOWS if "window" in used else WINDOWS[:1]
    empty = []
    for window in windows:
        expr = substitute(target["expr"], SUBSTITUTIONS | {"window": window})
        if not run.stack.query(expr):
            empty.append(expr)
    reason = EMPTY_FOR_A_REASON.get((title, target["refId"]))
    assert not empty or reason, f"{title}: no data for {empty}"


def test_template_variables_list_the_run_values(run):
    found: dict[str, list[str]] = {}
    for name in ("dimension", "segment"):
        match = _LABEL_VALUES.match(VARIABLES[name]["query"]["query"])
        assert match, VARIABLES[name]
        metric = substitute(match["metric"], {"dimension": SPIKED[0]})
        found[name] = run.stack.label_values(match["label"], metric)
    assert set(found["dimension"]) == {"all", "plan", "region"}
    assert set(found["segment"]) == {"free", "basic", "pro", "enterprise"}
    assert set(WINDOWS) <= set(
        run.stack.label_values("window", "segment:churn_customers_start:max")
    )


def test_the_alert_annotation_marks_the_spike(run):
    (annotation,) = [a for a in DASHBOARD["annotations"]["list"] if a.get("expr")]
    shown = run.stack.query(substitute(annotation["expr"], SUBSTITUTIONS))
    assert any(_spiked(sample["metric"]) for sample in shown), shown
    assert {sample["metric"]["alertname"] for sample in shown} <= set(SPIKE_ALERTS)
