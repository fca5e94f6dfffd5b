"""Source positions kept in Kafka, in a compacted topic, as Kafka Connect keeps its offsets.

The replication slot is where PostgreSQL keeps our position, but a slot can disappear (dropped
by hand, invalidated by ``max_slot_wal_keep_size``). Capture would then create a new slot at
the current end of the WAL and silently skip everything in between. Keeping the last
confirmed position here as well lets capture notice that and stop with the remedy instead.
One record per source, keyed by the source's identity; the newest record wins.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from pipeline.capture.publisher import ensure_topics, kafka_failure
from pipeline.config import KafkaSettings
from pipeline.errors import RetriableError
from pipeline.kafka.client import client_config, list_topics, raise_if_refused

log = logging.getLogger(__name__)

COMPACTED = {"cleanup.policy": "compact"}


class OffsetStore:
    """``load``/``save`` the JSON position of one source in ``kafka.offsets_topic``."""

    def __init__(self, kafka: KafkaSettings, identity: dict[str, str]) -> None:
        self.kafka = kafka
        self.topic = kafka.offsets_topic
        self.key = orjson.dumps(identity, option=orjson.OPT_SORT_KEYS)
        self._producer: Producer | None = None

    def load(self, timeout: float = 30.0) -> dict[str, Any] | None:
        """The newest position saved for this source, or None."""
        found: dict[str, Any] | None = None
        for key, value in read_compacted(self.kafka, self.topic, timeout):
            if key == self.key:
                found = None if value is None else orjson.loads(value)
        return found

    def save(self, position: dict[str, Any]) -> None:
        """Queue the newest position (delivery is checked at the next ``save``/``flush``)."""
        if self._producer is None:
            self._producer = Producer(client_config(self.kafka, {
                "enable.idempotence": True, "acks": "all", "linger.ms": 50}))
        self._producer.produce(self.topic, orjson.dumps(position), self.key,
                               on_delivery=_report)
        self._producer.poll(0)

    def forget(self) -> None:
        """Remove this source's position (a tombstone), e.g. after a deliberate reset."""
        if self._producer is None:
            self._producer = Producer(client_config(self.kafka))
        self._producer.produce(self.topic, None, self.key)
        self.flush()

    def flush(self, timeout: float = 10.0) -> int:
        """Wait for what was saved; returns how many saves Kafka has not acknowledged."""
        if self._producer is None:
            return 0
        return int(self._producer.flush(timeout))


def read_compacted(kafka: KafkaSettings, topic: str, timeout: float = 30.0
                   ) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of compacted ``topic`` (created if missing), oldest first per
    partition: what a reader needs to rebuild the newest state of each key."""
    ensure_topics(kafka, [topic], config=COMPACTED, partitions=1)
    consumer = Consumer(client_config(kafka, {
        "group.id": "cdc-offsets-reader", "enable.auto.commit": False,
        "enable.partition.eof": True}))
    try:
        meta = list_topics(consumer, timeout, topic).topics[topic]
        ends = {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p, 0),
                                                       timeout=timeout)
            if high > low:
                ends[p] = high
        if not ends:
            return []
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        out: list[tuple[bytes | None, bytes | None]] = []
        waiting = set(ends)
        while waiting:
            msg = consumer.poll(timeout)
            if msg is None:
                raise_if_refused(consumer)
                raise RetriableError(f"reading '{topic}' timed out")
            error = msg.error()
            partition = msg.partition() or 0
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    waiting.discard(partition)
                    continue
                raise kafka_failure(error, f"reading '{topic}'")
            out.append((msg.key(), msg.value()))
            if (msg.offset() or 0) + 1 >= ends[partition]:
                waiting.discard(partition)
        return out
    except KafkaException as exc:
        raise_if_refused(consumer, exc)
        raise kafka_failure(exc, f"reading '{topic}'") from exc
    finally:
        consumer.close()


def _report(err: Any, _msg: Any) -> None:
    if err is not None:
        log.warning("could not save the capture position to Kafka: %s", err)
