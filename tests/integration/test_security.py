"""Security basics on a running worker: /metrics binds only to CHURN_METRICS_HOST; no
customer id, event id or attribute value outside the configured dimensions reaches the
INFO log or a metric label; the SASL password never reaches the log."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import orjson

from stream.broker import create_topics, free_port, standard_topics
from tests.integration.kafka_io import (
    WorkerProcess,
    converge,
    expected_records,
    produce,
    reliability_settings,
)

METRICS_HOST = "127.0.0.2"  # a loopback address other than 127.0.0.1 (Linux routes 127/8)
SASL_PASSWORD = "never-log-me-7f3a"


def private_events() -> list[bytes]:
    """Events whose ids and non-dimension attributes are recognisable if they leak."""
    events = []
    for n in range(60):
        customer = f"cust-PRIVATE-{n:03d}"
        attributes = {"plan": f"plan{n % 3}", "region": "eu", "email": f"user{n}@private.example"}
        events.append(
            {
                "event_id": f"evt-PRIVATE-{n:03d}-a",
                "type": "subscribed",
                "customer_id": customer,
                "occurred_at": f"2026-02-{1 + n % 27:02d}T10:00:00Z",
                "mrr": 10.0 + n,
                "attributes": attributes,
            }
        )
        events.append(
            {
                "event_id": f"evt-PRIVATE-{n:03d}-b",
                "type": "churned" if n % 4 == 0 else "purchase",
                "customer_id": customer,
                "occurred_at": f"2026-03-{1 + n % 27:02d}T10:00:00Z",
                **({} if n % 4 == 0 else {"amount": 5.0}),
                "attributes": {"email": f"user{n}@private.example", "phone": f"+1555{n:04d}"},
            }
        )
    return [orjson.dumps(event) for event in events]


def invalid_private_events() -> list[bytes]:
    return [
        b'{"event_id":"evt-PRIVATE-bad","type":"churned","customer_id":"cust-PRIVATE-bad",'
        b'"occurred_at":"2026-02-01T00:00:00"}',
        b'{"event_id":"evt-PRIVATE-bad2","type":"upgraded","customer_id":"cust-PRIVATE-bad",'
        b'"occurred_at":"2026-02-01T00:00:00Z","attributes":{"email":"bad@private.example"}}',
    ]


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port` (from /proc/net/tcp)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                if len(address) == 8:
                    found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
                else:
                    found.add(address)
    return found


def refuses(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) != 0


async def test_metrics_bind_address_and_no_private_data_in_logs_or_labels(
    broker, topic_prefix, tmp_path
):
    settings = reliability_settings(
        topic_prefix, broker.url, tmp_path, metrics_host=METRICS_HOST, log_level="info"
    )
    await create_topics(broker.bootstrap, standard_topics(settings))
    valid, invalid = private_events(), invalid_private_events()
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        await worker.wait_for_metrics()
        port = settings.metrics_port
        assert listening_addresses(port) == {METRICS_HOST}
        assert refuses("127.0.0.1", port)
        await produce(broker.bootstrap, settings.input_topic, valid + invalid)
        await converge(broker.bootstrap, settings.output_topic, expected_records(valid), 120)
        metrics = worker.scrape()
        worker.assert_running()
    finally:
        worker.stop()
    log = worker.log_text()

    assert 'dimension="plan",segment="plan1"' in metrics  # dimension values are labels
    for text, where in ((log, "worker log"), (metrics, "/metrics")):
        for secret in ("PRIVATE", "private.example", "+1555", "phone", "email"):
            assert secret not in text, f"{secret!r} found in the {where}"


async def test_sasl_password_is_never_logged(tmp_path):
    settings = reliability_settings(
        "sasl-",
        f"kafka://127.0.0.1:{free_port()}",
        tmp_path,
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="churn-worker",
        sasl_password=SASL_PASSWORD,
        startup_timeout_seconds=5,
        log_level="debug",
    )
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    code = await asyncio.to_thread(worker.wait, 60)
    log = worker.log_text()
    assert code == 2, log[-2000:]
    assert "SCRAM-SHA-512" in log and "churn-worker" in log  # the summary is there...
    assert SASL_PASSWORD not in log  # ...the secret is not, even at debug level
