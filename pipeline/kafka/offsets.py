"""Two questions a worker asks Kafka about positions: where its group left off in some
partitions, and where the next record at or after an offset really is."""

from __future__ import annotations

import time
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pipeline.config import KafkaSettings
from pipeline.errors import RetriableError
from pipeline.kafka.client import client_config, raise_if_refused

Partition = tuple[str, int]


def committed_offsets(kafka: KafkaSettings, group: str, partitions: Iterable[Partition],
                      timeout: float = 10.0, earliest: bool = False
                      ) -> dict[Partition, int | None]:
    """The group's committed offset (the next to read) per partition. Where it has none:
    the log's start with ``earliest`` (``auto.offset.reset=earliest``), else None."""
    asked = [TopicPartition(topic, p) for topic, p in partitions]
    if not asked:
        return {}
    try:
        consumer = Consumer(client_config(kafka, {"group.id": group,
                                                  "enable.auto.commit": False}))
    except KafkaException as exc:
        raise RetriableError(f"cannot reach Kafka at {kafka.bootstrap_servers}: {exc}"
                             ) from exc
    try:
        answer = consumer.committed(asked, timeout=timeout)
        out: dict[Partition, int | None] = {}
        for tp in answer:
            if tp.offset >= 0:
                out[(tp.topic, tp.partition)] = tp.offset
            elif earliest:  # no commit yet: the group starts at the log's start
                low, _ = consumer.get_watermark_offsets(tp, timeout=timeout)
                out[(tp.topic, tp.partition)] = low
            else:
                out[(tp.topic, tp.partition)] = None
    except KafkaException as exc:
        raise_if_refused(consumer, exc)
        raise RetriableError(f"Kafka did not say where group {group} left off: {exc}") from exc
    finally:
        consumer.close()
    return out


def log_offsets(kafka: KafkaSettings, partition: Partition, start: int, until: int,
                timeout: float = 10.0) -> list[int]:
    """The offsets of the records the log holds in ``[start, until]``, as a
    ``read_uncommitted`` consumer sees them (transaction markers and compacted keys leave
    holes)."""
    topic, p = partition
    try:
        consumer = Consumer(client_config(kafka, {
            "group.id": f"cdc-continuity-{topic}",
            "enable.auto.commit": False, "enable.partition.eof": True,
            "isolation.level": "read_uncommitted", "fetch.max.bytes": 8 * 1024 * 1024,
        }))
    except KafkaException as exc:
        raise RetriableError(f"cannot reach Kafka at {kafka.bootstrap_servers}: {exc}"
                             ) from exc
    found: list[int] = []
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
        first, last = max(start, low), min(until, high - 1)
        if first > last:
            return found
        consumer.assign([TopicPartition(topic, p, first)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    return found
                raise RetriableError(f"reading {topic}[{p}] from {start}: {err}")
            offset = int(msg.offset() or 0)
            if offset > last:
                return found
            found.append(offset)
            if offset == last:
                return found
    except KafkaException as exc:
        raise_if_refused(consumer, exc)
        raise RetriableError(f"reading {topic}[{p}] from {start}: {exc}") from exc
    finally:
        consumer.close()
    raise RetriableError(f"reading {topic}[{p}] from {start}: no answer in {timeout:.0f}s")
