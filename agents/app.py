"""The Faust app of one sink: an agent reads the raw CDC topics in batches and writes them.

Each configured sink runs as its own app, with its own consumer group (``<app_id>-<sink>``),
so a slow or failing sink never stalls another. ``cdc worker`` starts one process per sink;
``cdc worker --sink search`` (or ``CDC_WORKER_SINK=search faust -A agents.app worker``) runs
one. Settings come from the file in ``CDC_CONFIG`` plus ``CDC_*`` environment overrides.
Scale a sink by starting more of its workers: the raw topics' partitions are shared among
them, and each row's changes stay on one partition.

Faust's traps, and how this module avoids them:
- An exception escaping an agent acks the events it was handling (they would be skipped).
  So nothing escapes: bad data goes to the dead-letter topic inside the processor, and any
  other failure is retried here with backoff while the batch waits.
- ``take``/``take_events`` ack their batch in a ``finally``, even when the body raised. So we
  use ``stream.noack().noack_take`` and ack each event ourselves, in order, only after
  ``process`` returned: offsets are committed only after the sinks confirmed. Should
  anything escape anyway, the process exits at once without acking (redelivery, not loss).
- ``concurrency`` stays 1: more would let a finished batch commit past one still in flight.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import faust

from pipeline.compose import build_processor, start_metrics
from pipeline.config import load_settings
from pipeline.deadletter import RawRecord
from pipeline.sinks.registry import select_sink

log = logging.getLogger(__name__)

settings = load_settings()
SINK = select_sink(settings, os.environ.get("CDC_WORKER_SINK"))
GROUP = settings.group_id(SINK)
metrics, exporter = start_metrics(settings, f"worker-{SINK}-{os.getpid()}")
DATADIR = os.path.join(os.environ.get("CDC_WORKER_DATADIR", "/tmp/cdc-worker-data"), GROUP)
os.makedirs(os.path.dirname(DATADIR), exist_ok=True)

app = faust.App(
    GROUP,
    broker=f"kafka://{settings.kafka.bootstrap_servers}",
    store="memory://",
    key_serializer="raw",
    value_serializer="raw",
    consumer_auto_offset_reset="earliest",
    broker_commit_interval=0.5,
    web_enabled=settings.worker.web_port is not None,
    web_port=settings.worker.web_port or 6066,
    web_bind="127.0.0.1",
    topic_allow_declare=False,
    topic_disable_leader=True,
    producer_acks=-1,
    datadir=DATADIR,
)

raw_topics = app.topic(*settings.raw_topics(), key_serializer="raw", value_serializer="raw")
processor = build_processor(settings, SINK, metrics)


def to_record(event: Any) -> RawRecord:
    message = event.message
    return RawRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        timestamp_ms=int((message.timestamp or 0) * 1000),
        headers=tuple((k, bytes(v or b"")) for k, v in (message.headers or ())),
    )


async def process_until_done(records: list[RawRecord]) -> None:
    """Process one batch; on any failure wait and try the whole batch again (idempotent)."""
    delay = settings.worker.retry_initial_ms / 1000
    while True:
        try:
            await processor.process(records)
            return
        except Exception as exc:  # noqa: BLE001 - nothing may escape an agent (see above)
            metrics.inc("cdc_worker_errors_total", kind=type(exc).__name__)
            log.exception("batch of %d failed, retrying in %.1fs: %s", len(records), delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, settings.worker.retry_max_ms / 1000)


@app.agent(raw_topics, concurrency=1)
async def fan_out(stream: Any) -> None:
    """Raw topics -> this worker's sink; dead letters to the dead-letter topic."""
    within = max(settings.worker.batch_wait_ms, 1) / 1000
    manual = stream.noack()
    try:
        async for events in manual.noack_take(settings.worker.batch_size, within=within):
            await process_until_done([to_record(e) for e in events])
            for event in events:
                await manual.ack(event)
            metrics.inc("cdc_worker_batches_total")
    except asyncio.CancelledError:
        raise
    except BaseException:  # noqa: BLE001 - see the module docstring: exit rather than ack
        log.critical("agent failed outside batch processing; exiting without acking", exc_info=True)
        logging.shutdown()
        os._exit(70)
