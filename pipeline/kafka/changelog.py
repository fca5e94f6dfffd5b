"""The dedup seen-set's changelog: a compacted topic co-partitioned with the raw topics.

Each entry is written to the changelog partition of the raw partition its row came from, so
the worker that owns a raw partition (after a restart or a rebalance) restores exactly the
entries it needs by reading that changelog partition. Writes go out in batches with the C
producer; ``flush()`` waits for them and runs before offsets are committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka import Producer as KafkaProducer

from pipeline.config import KafkaSettings
from pipeline.errors import RetriableError
from pipeline.kafka.client import client_config, produce_waiting, raise_if_refused


class ChangelogWriter:
    """Writes entries with the C producer. Several drains may write and flush at once (one
    per partition): a flush waits for the entries written before it began, not for those
    written meanwhile, so it ends even while other drains keep writing. Delivery reports
    come in produce order per partition, so "every entry written before" is, per
    partition, a count of reports.

    An entry Kafka never took (its delivery failed, say after ``message.timeout.ms`` of an
    outage) is written again by the next flush, with the key's value as the store holds it
    then (``current``; a newer value may have been written since), and every flush that a
    failure reported during it could concern raises: no drain acknowledges records whose
    entries the changelog does not hold."""

    def __init__(self, topic: str, kafka: KafkaSettings) -> None:
        self.topic = topic
        self.kafka = kafka
        self._producer = KafkaProducer(client_config(kafka, {
            "enable.idempotence": True, "acks": "all", "linger.ms": 5,
            "compression.type": "lz4",
        }))
        #: the store's value of a key now (None: gone); set by the store this writer mirrors.
        #: Without it a lost entry is written again as it was.
        self.current: Callable[[str], str | None] | None = None
        self._failures = 0  # deliveries that failed, ever
        self._error = ""  # the last failure's reason
        #: entries whose delivery failed, by key: (partition, payload), to write again
        self._lost: dict[bytes, tuple[int, bytes | None]] = {}
        self._written: dict[int, int] = {}  # entries queued per partition (event loop only)
        self._reported: dict[int, int] = {}  # delivery reports per partition
        self._lock = threading.Lock()  # reports may be served by several flushing threads

    def write(self, partition: int, key: str, value: str | None) -> None:
        """Queue an entry (None deletes it)."""
        self._produce(partition, orjson.dumps(key), None if value is None else orjson.dumps(value))

    def write_many(self, partition: int, entries: Iterable[tuple[str, str]]) -> None:
        """Queue entries of one partition: :meth:`write` for each, in one loop (a batch's
        entries are most of a worker's changelog cost)."""
        produce, topic, delivered, dumps = (self._producer.produce, self.topic,
                                            self._delivered, orjson.dumps)
        queued = 0
        try:
            for key, value in entries:
                raw_key, payload = dumps(key), dumps(value)
                try:
                    produce(topic, payload, raw_key, partition, delivered)
                except BufferError:  # a full queue: wait for room as write() does
                    produce_waiting(self._producer, topic, payload, raw_key, 0.05,
                                    partition=partition, on_delivery=delivered)
                queued += 1
        finally:  # what was queued counts, should a produce have raised
            self._written[partition] = self._written.get(partition, 0) + queued

    def _produce(self, partition: int, key: bytes, payload: bytes | None) -> None:
        produce_waiting(self._producer, self.topic, payload, key, 0.05, partition=partition,
                        on_delivery=self._delivered)
        self._written[partition] = self._written.get(partition, 0) + 1

    def _delivered(self, err: Any, msg: Any) -> None:
        with self._lock:
            partition = msg.partition()
            self._reported[partition] = self._reported.get(partition, 0) + 1
            if err is not None:
                self._failures += 1
                self._error = str(err)
                self._lost[msg.key()] = (partition, msg.value())

    def _write_lost_again(self) -> int:
        """Write the lost entries again; the failure count when they were taken: a failure
        reported after that (even while rewriting, which may serve reports) is this
        flush's to raise, as its entry waits in ``_lost`` for the next one."""
        with self._lock:
            lost, self._lost = self._lost, {}
            failures = self._failures
        for key, (partition, payload) in lost.items():
            if self.current is not None:
                value = self.current(orjson.loads(key))
                payload = None if value is None else orjson.dumps(value)
            self._produce(partition, key, payload)
        return failures

    def forget(self, partitions: set[int]) -> None:
        """Partitions this worker no longer owns: their lost entries are not written again
        (the store no longer holds their keys, so a rewrite would write deletes into a
        changelog partition the new owner writes to)."""
        with self._lock:
            self._lost = {k: v for k, v in self._lost.items() if v[0] not in partitions}

    def _reached(self, target: dict[int, int]) -> bool:
        reported = self._reported
        return all(reported.get(p, 0) >= n for p, n in target.items())

    def _serve(self, target: dict[int, int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._reached(target) and time.monotonic() < deadline:
            self._producer.flush(0.05)  # sends at once (no linger), serves the reports

    async def flush(self, timeout: float = 30.0) -> None:
        """Wait until the changelog holds every entry written before this call (entries
        lost before it are written again first)."""
        failures = self._write_lost_again()
        target = dict(self._written)
        if not self._reached(target):
            await asyncio.to_thread(self._serve, target, timeout)
        if self._failures != failures:
            # (one of this flush's entries, or another drain's: either way, not known safe)
            raise RetriableError(f"changelog {self.topic} not acknowledged: {self._error}; "
                                 "its lost entries are written again by the next flush")
        if not self._reached(target):
            raise RetriableError(f"changelog {self.topic} not acknowledged in {timeout:g}s")

    def read(self, partitions: list[int], timeout: float = 30.0,
             into: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
        """The latest value of every live key in some changelog partitions, written into
        ``into`` as it is read (a new dict when None)."""
        return read_changelog(self.topic, self.kafka, partitions, timeout, into)


def read_changelog(topic: str, kafka: KafkaSettings, partitions: list[int],
                   timeout: float = 30.0, into: MutableMapping[str, str] | None = None,
                   ) -> MutableMapping[str, str]:
    """The latest value of every live key in some partitions of changelog ``topic``,
    written into ``into`` as it is read (a new dict when None)."""
    consumer = Consumer(client_config(kafka, {
        "group.id": f"{topic}-restore", "enable.auto.commit": False}))
    state: MutableMapping[str, str] = {} if into is None else into
    try:
        ends: dict[int, int] = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                       timeout=timeout)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        while ends:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error() is not None:
                raise RetriableError(f"reading changelog {topic}: {msg.error()}")
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
        raise_if_refused(consumer, exc)
        raise RetriableError(f"reading changelog {topic}: {exc}") from exc
    finally:
        consumer.close()
    return state


class ChangelogStore(MutableMapping[str, str]):
    """The dedup store: entries in a mapping (a dict, or a Faust table's data), mirrored to
    the changelog. Stored values are ``"<partition>|<entry>"``, so an eviction or a revoked
    partition knows where each entry lives; the processor sets the partition of each write
    with ``scope``."""

    def __init__(self, changelog: ChangelogWriter,
                 data: MutableMapping[str, str] | None = None) -> None:
        self.changelog = changelog
        self.data: MutableMapping[str, str] = {} if data is None else data
        self.partition = 0
        changelog.current = self.data.get

    @contextlib.contextmanager
    def scope(self, partition: int) -> Iterator[None]:
        self.partition = partition
        yield

    @staticmethod
    def value_of(raw: Any) -> str:
        """An entry's value, as the store was given it (entries are ``<partition>|<value>``,
        so each goes back to its partition's changelog)."""
        return str(raw).split("|", 1)[1]

    def __getitem__(self, key: str) -> str:
        raw = self.data.get(key)
        if raw is None:
            raise KeyError(key)
        return self.value_of(raw)

    def get(self, key: str, default: Any = None) -> Any:
        raw = self.data.get(key)
        return default if raw is None else self.value_of(raw)

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        """The values of ``keys`` (None: absent), in one read when the underlying store
        reads many at once (a disk store)."""
        get_many = getattr(self.data, "get_many", None)
        raws = get_many(keys) if get_many is not None else [self.data.get(k) for k in keys]
        return [None if raw is None else self.value_of(raw) for raw in raws]

    def __setitem__(self, key: str, value: str) -> None:
        raw = f"{self.partition}|{value}"
        # the changelog first: should queueing fail, the store must not hold an entry the
        # changelog never got (a retry would take it for applied, and never write it)
        self.changelog.write(self.partition, key, raw)
        self.data[key] = raw

    def update(self, other: Any = (), /, **kwargs: str) -> None:
        """Set the entries (given as to ``dict.update``), all of the current partition:
        one changelog entry each, then one write of the underlying store (one batch on
        disk). Should queueing an entry fail, the store is left as it was (see
        ``__setitem__``)."""
        prefix = f"{self.partition}|"
        raws = {key: prefix + value for key, value in dict(other, **kwargs).items()}
        self.changelog.write_many(self.partition, raws.items())
        self.data.update(raws)

    def __delitem__(self, key: str) -> None:
        raw = self.data.pop(key, None)
        if raw is None:
            raise KeyError(key)
        self.changelog.write(int(str(raw).split("|", 1)[0]), key, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.data.keys()))

    def __len__(self) -> int:
        return len(self.data)

    async def flush(self) -> None:
        await self.changelog.flush()

    def restore(self, partitions: set[int]) -> None:
        """Load the entries of some partitions from the changelog (on assignment), straight
        into the store (a disk store never holds them all in memory)."""
        self.changelog.read(sorted(partitions), into=self.data)

    def forget(self, partitions: set[int]) -> None:
        """Drop the entries of partitions this worker no longer owns."""
        gone = [key for key, raw in self.data.items()
                if int(str(raw).split("|", 1)[0]) in partitions]
        for key in gone:
            del self.data[key]
        self.changelog.forget(partitions)

    def scan(self, after: str | None, limit: int) -> list[str] | None:
        """Keys in order past ``after`` when the underlying store can walk that way (a disk
        store), else None (the caller snapshots the keys instead)."""
        scan = getattr(self.data, "scan", None)
        keys = None if scan is None else scan(after, limit)
        return None if keys is None else list(keys)
