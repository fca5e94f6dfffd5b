"""The new-record-state sink: each change as the row alone, on a topic of its own, for
consumers that want rows rather than envelopes (Debezium's ``ExtractNewRecordState``).

    sinks:
      rows:
        type: new_record_state
        topic_suffix: ".rows"          # <prefix>.<schema>.<table>.rows
        delete_handling: rewrite        # rewrite | tombstone | drop

A create, update or snapshot read becomes its ``after`` row plus ``__op`` (``c``, ``u``,
``r``) and ``__deleted: "false"``. A delete becomes, with ``rewrite`` (Debezium's
``delete.handling.mode=rewrite``), its ``before`` row with ``__op: "d"`` and
``__deleted: "true"``; with ``tombstone`` a null value (compaction removes the key); with
``drop`` nothing. Truncates carry no row and are not written. Keys are the change's key
(the primary-key columns as JSON), so a row's changes stay in order on one partition.

It runs as a sink of the worker, not in capture: capture's hot path and the raw topics stay
as they are, and the flattened topic is an opt-in copy with its own consumer group. Like
every sink it is at-least-once: after a crash a change may be written twice (same key, same
row), which a consumer keeping the latest row per key absorbs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal

import orjson
from confluent_kafka import Producer
from pydantic import BaseModel, ConfigDict

from pipeline.config import KafkaSettings
from pipeline.errors import SinkUnavailableError
from pipeline.events import ChangeEvent
from pipeline.kafka.client import client_config, produce_waiting
from pipeline.sinks.base import Rejection


class NewRecordStateSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Appended to the raw topic's name: ``<prefix>.<schema>.<table><suffix>``.
    topic_suffix: str = ".rows"
    #: Deletes: ``rewrite`` (the old row with ``__deleted: "true"``), ``tombstone``, ``drop``.
    delete_handling: Literal["rewrite", "tombstone", "drop"] = "rewrite"


def flattened(event: ChangeEvent, delete_handling: str) -> tuple[bool, bytes | None]:
    """(write it?, value) of one change as the new record state."""
    if event.op == "t":
        return False, None
    if event.op == "d":
        if delete_handling == "drop":
            return False, None
        if delete_handling == "tombstone":
            return True, None
        return True, orjson.dumps({**(event.before or event.key or {}), "__op": "d",
                                   "__deleted": "true"})
    return True, orjson.dumps({**(event.after or {}), "__op": event.op, "__deleted": "false"})


class NewRecordStateSink:
    """Writes each change's row to ``<raw topic><topic_suffix>``."""

    Settings = NewRecordStateSettings
    #: The registry passes ``kafka=`` (the same client settings as every Kafka client).
    uses_kafka = True

    def __init__(self, name: str, settings: NewRecordStateSettings, *,
                 kafka: KafkaSettings) -> None:
        self.name = name
        self.settings = settings
        self.kafka = kafka
        self._producer = Producer(client_config(kafka, {
            "enable.idempotence": True, "acks": "all", "linger.ms": 5}))
        self._topics: set[str] = set()

    def topic_for(self, event: ChangeEvent) -> str:
        return self.kafka.raw_topic(event.table_id) + self.settings.topic_suffix

    async def write(self, batch: Sequence[ChangeEvent]) -> list[Rejection]:
        records = []
        for event in batch:
            keep, value = flattened(event, self.settings.delete_handling)
            if keep:
                records.append((self.topic_for(event), orjson.dumps(event.key), value))
        missing = {topic for topic, _, _ in records} - self._topics
        if missing:
            from pipeline.capture.publisher import ensure_topics

            await asyncio.to_thread(ensure_topics, self.kafka, sorted(missing))
            self._topics |= missing
        failures: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        for topic, key, value in records:
            produce_waiting(self._producer, topic, value, key, on_delivery=delivered)
        remaining = await asyncio.to_thread(self._producer.flush, 30.0)
        if remaining or failures:
            raise SinkUnavailableError(f"sink {self.name}: Kafka did not acknowledge "
                                       f"{remaining or len(failures)} rows: {failures[:1]}")
        return []

    async def close(self) -> None:
        await asyncio.to_thread(self._producer.flush, 10.0)
