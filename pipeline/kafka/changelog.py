"""The dedup seen-set's changelog: a compacted topic co-partitioned with the raw topics.

Each entry is written to the changelog partition of the raw partition its row came from, so
the worker that owns a raw partition (after a restart or a rebalance) restores exactly the
entries it needs by reading that changelog partition. Writes go out in batches with the C
producer; ``flush()`` waits for them and runs before offsets are committed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka import Producer as KafkaProducer

from pipeline.errors import RetriableError


class ChangelogWriter:
    def __init__(self, topic: str, bootstrap_servers: str) -> None:
        self.topic = topic
        self.bootstrap_servers = bootstrap_servers
        self._producer = KafkaProducer({
            "bootstrap.servers": bootstrap_servers, "enable.idempotence": True,
            "acks": "all", "linger.ms": 5, "compression.type": "lz4",
        })
        self._failed: list[str] = []

    def write(self, partition: int, key: str, value: str | None) -> None:
        """Queue an entry (None deletes it)."""
        payload = None if value is None else orjson.dumps(value)
        while True:
            try:
                self._producer.produce(self.topic, payload, orjson.dumps(key),
                                       partition=partition, on_delivery=self._delivered)
                return
            except BufferError:
                self._producer.poll(0.05)

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._failed.append(str(err))

    async def flush(self) -> None:
        """Wait until the changelog holds every entry written so far."""
        if len(self._producer):
            await asyncio.to_thread(self._producer.flush, 30.0)
        if self._failed or len(self._producer):
            failed, self._failed = self._failed, []
            raise RetriableError(f"changelog {self.topic} not acknowledged: {failed[:1]}")

    def read(self, partitions: list[int], timeout: float = 30.0) -> dict[str, str]:
        """The latest value of every live key in some changelog partitions."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap_servers,
                             "group.id": f"{self.topic}-restore", "enable.auto.commit": False})
        state: dict[str, str] = {}
        try:
            ends: dict[int, int] = {}
            for p in partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p),
                                                           timeout=timeout)
                if high > low:
                    ends[p] = high
            consumer.assign([TopicPartition(self.topic, p, 0) for p in ends])
            while ends:
                msg = consumer.poll(1.0)
                if msg is None:
                    continue
                if msg.error() is not None:
                    raise RetriableError(f"reading changelog {self.topic}: {msg.error()}")
                raw_key, value = msg.key(), msg.value()
                partition, offset = msg.partition() or 0, msg.offset() or 0
                if raw_key is not None:
                    key = orjson.loads(raw_key)
                    if value is None:
                        state.pop(key, None)
                    else:
                        state[key] = orjson.loads(value)
                if offset + 1 >= ends.get(partition, 0):
                    ends.pop(partition, None)
        except KafkaException as exc:
            raise RetriableError(f"reading changelog {self.topic}: {exc}") from exc
        finally:
            consumer.close()
        return state
