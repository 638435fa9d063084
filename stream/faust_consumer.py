"""faust's consumer with a short fetch wait and exact changelog end offsets.

* faust-streaming 0.15.3 creates its aiokafka consumer with `fetch_max_wait_ms=1500`,
  hard-coded. On the embedded broker a fetch that waits that long only sees a record
  produced meanwhile ~0.4 s late (measured: 0.38 s; on 2026-12-05 one hop's median was
  133 ms with aiokafka's default 500 ms and 28 ms with 100 ms), and the worker has three
  faust-consumed hops (customer batches, segment deltas, changelog recovery), so every
  event reached the output seconds late. The worker's consumer waits
  `kafka_config.FETCH_MAX_WAIT_MS` instead (as the ingest stage's consumer).
* faust's table recovery reads each changelog partition up to the end offset the broker
  reports (`Consumer.highwaters`, used by nothing else). The embedded broker under-reports
  it after multi-record batches, so the worker's consumer answers with the end offsets
  read from the records (`stream/end_offsets.py`), through a consumer of its own.
* After a crash it commits nothing. `App.crash` marks every service crashed, the consumer
  thread included, whose event loop then stops serving calls; faust's stop still commits
  the acknowledged offsets through that thread (`Consumer.wait_empty`), and when the
  thread was gone first the commit waited forever (reproduced: 1 crash in 14 on one
  broker). A crashed worker is restarted and reads again from the last commit, which is
  what the pipeline's exactness is built for.

Nothing else of faust's consumer changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from stream.end_offsets import exact_end_offsets
from stream.kafka_config import FETCH_MAX_WAIT_MS


class _PromptConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):  # type: ignore[misc]
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts
        return consumer


class _WorkerConsumer(faust_aiokafka.Consumer):  # type: ignore[misc]
    client_options: ClassVar[dict[str, Any]] = {}

    def _new_consumer_thread(self) -> _PromptConsumerThread:
        return _PromptConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        if self.app.crash_reason is not None:
            return False
        return bool(await super().commit(topics, start_new_transaction=start_new_transaction))

    async def highwaters(self, *partitions: TP) -> Mapping[TP, int]:
        consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **self.client_options)
        await consumer.start()
        try:
            ends = await exact_end_offsets(
                consumer, [TopicPartition(tp.topic, tp.partition) for tp in partitions]
            )
        finally:
            await consumer.stop()
        return {TP(tp.topic, tp.partition): end for tp, end in ends.items()}


def use_worker_consumer(app: faust.App, client_options: dict[str, Any]) -> None:
    """Give `app` (before its consumer is created) the worker's consumer; `client_options`
    connect the consumer that reads end offsets (`kafka_config.aiokafka_options`)."""
    consumer_class = type("WorkerConsumer", (_WorkerConsumer,), {"client_options": client_options})
    app.transport.Consumer = consumer_class  # type: ignore[misc]  # faust types it ClassVar
