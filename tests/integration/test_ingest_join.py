"""The ingest stage joins the input's consumer group when the worker starts, before the
ingest task runs (`Ingest.start_joining`, README, "Joining the input's group early"). It
fetches nothing until the task runs, and its clients must be stopped whether or not the
task ever ran."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client import CollectorRegistry

from stream.broker import create_topics, standard_topics
from stream.ingest import Ingest
from stream.observability import Metrics
from tests.integration.kafka_io import produce, reliability_settings, simulated

FETCH_API_KEY = 1  # the Kafka protocol's Fetch request


async def joined_ingest(broker, topic_prefix, tmp_path) -> Ingest:
    settings = reliability_settings(topic_prefix, broker.url, tmp_path)
    await create_topics(broker.bootstrap, standard_topics(settings))
    await produce(broker.bootstrap, settings.input_topic, simulated(customers=10, days=5, seed=31))
    ingest = Ingest(settings, Metrics.create(CollectorRegistry()))
    ingest.start_joining()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        ingest._consumer is not None and ingest._consumer.assignment()
    ):
        await asyncio.sleep(0.1)
    assert ingest._consumer is not None and ingest._consumer.assignment()
    return ingest


def watch_fetches(consumer: Any) -> list[float]:
    """When the consumer sends Fetch requests from now on."""
    client = consumer._client
    send = client.send
    sent: list[float] = []

    async def sending(node_id: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if request.API_KEY == FETCH_API_KEY:
            sent.append(time.monotonic())
        return await send(node_id, request, *args, **kwargs)

    client.send = sending
    return sent


async def test_a_stage_stopped_before_it_ran_stops_the_clients_it_started(
    broker, topic_prefix, tmp_path
):
    ingest = await joined_ingest(broker, topic_prefix, tmp_path)
    consumer, producer = ingest._consumer, ingest._producer
    assert consumer is not None and producer is not None
    fetches = watch_fetches(consumer)
    await asyncio.sleep(1)
    assert consumer.paused() == consumer.assignment()  # fetched nothing while it waited
    assert fetches == []

    await ingest.stop_unless_running()

    assert consumer._closed and producer._closed
    assert ingest._consumer is None and ingest._producer is None


async def test_a_stage_stopped_while_it_still_joins_stops_cleanly(broker, topic_prefix, tmp_path):
    settings = reliability_settings(topic_prefix, broker.url, tmp_path)
    await create_topics(broker.bootstrap, standard_topics(settings))
    ingest = Ingest(settings, Metrics.create(CollectorRegistry()))
    ingest.start_joining()
    await asyncio.sleep(0)  # the join has begun, not finished

    await asyncio.wait_for(ingest.stop_unless_running(), 30)

    assert ingest._consumer is None and ingest._producer is None


async def test_a_running_stage_keeps_its_clients_until_its_loop_ends(
    broker, topic_prefix, tmp_path
):
    ingest = await joined_ingest(broker, topic_prefix, tmp_path)
    consumer = ingest._consumer
    assert consumer is not None
    fetches = watch_fetches(consumer)
    running = asyncio.ensure_future(ingest.run())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ingest._next_offsets:
        await asyncio.sleep(0.1)  # it reads what was produced, with the clients it joined
    assert ingest._next_offsets, "the stage read nothing"
    assert fetches  # its partitions resumed

    await ingest.stop_unless_running()
    assert not consumer._closed and ingest._consumer is consumer

    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    assert consumer._closed and ingest._consumer is None
