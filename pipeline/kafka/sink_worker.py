"""The ``kafka`` worker engine: one sink's worker as a confluent-kafka consume loop.

Same processing as the Faust agent (``BatchProcessor``: decode, evolve, reorder, dedup, sink,
dead letters), same consumer group (``<app_id>-<sink>``), same dedup changelog; without
Faust's per-event stream machinery, which caps a worker near 8k events/s on our benchmark
machine (see bench/RESULTS.md). Choose it with ``worker.engine: kafka``.

Offsets: committed per partition for the contiguous prefix of finished records, after the
sink confirmed and the dedup changelog was flushed (``pipeline.worker_loop``, shared with the
Faust engine; this module only adapts confluent-kafka's consumer to it).
Partitions are assigned with the range strategy, so partition N of every raw topic goes to
the same worker (the dedup changelog is co-partitioned with them). On assignment the worker
restores the dedup entries of its partitions from the changelog; on revocation it commits
what is finished and forgets the rest, which the next owner reads again. While the sink is
down the worker pauses its partitions and keeps polling (``pipeline.backpressure``), so a
long outage never costs it its place in the group.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from pipeline import heap
from pipeline.backpressure import Backpressure
from pipeline.capture.publisher import AUTH_ERRORS, kafka_failure
from pipeline.compose import build_processor, worker_data_dir
from pipeline.config import Settings
from pipeline.deadletter import RawRecord
from pipeline.kafka.changelog import ChangelogStore, ChangelogWriter
from pipeline.kafka.client import client_config, poll_limits
from pipeline.metrics import Metrics
from pipeline.seenstore import open_seen_store
from pipeline.worker_loop import WorkerLoop

log = logging.getLogger(__name__)


class KafkaSinkWorker:
    def __init__(self, settings: Settings, sink: str, metrics: Metrics) -> None:
        self.settings = settings
        self.group = settings.group_id(sink)
        self.metrics = metrics
        self.seen = open_seen_store(settings.worker.store, worker_data_dir(self.group),
                                    settings.worker.store_chosen)
        self.store = ChangelogStore(ChangelogWriter(
            f"{self.group}-dedup-changelog", settings.kafka), self.seen)
        self.sink = sink
        self.backpressure = Backpressure(metrics, sink)
        self.backpressure.attach(self)
        self.processor = build_processor(settings, sink, metrics, dedup_store=self.store,
                                         partition_scope=self.store.scope,
                                         backpressure=self.backpressure)
        self.loop: WorkerLoop[tuple[str, int, int]] = WorkerLoop(
            self.processor, self.store, metrics, self._commit_async,
            retry_initial_s=settings.worker.retry_initial_ms / 1000,
            retry_max_s=settings.worker.retry_max_ms / 1000, sink=sink,
            backpressure=self.backpressure)
        self.consumer = Consumer(client_config(settings.kafka, {
            "group.id": self.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "partition.assignment.strategy": "range",
            # Prefetch is bounded (librdkafka's defaults let a worker slower than its topic
            # queue 64 MB ahead): 16 MB is still dozens of batches.
            "fetch.max.bytes": 16 << 20,
            "queued.max.messages.kbytes": 16 << 10,
            **poll_limits(settings.worker.max_poll_interval_ms),
        }))
        self.assigned: set[tuple[str, int]] = set()
        #: records polled while the partitions were paused (fetched before the pause, or of
        #: a partition assigned meanwhile): taken once the write in progress is done
        self._held_back: list[tuple[RawRecord, tuple[str, int, int]]] = []

    # -- rebalances (called from inside consume) -----------------------------------------
    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        new = {(tp.topic, tp.partition) for tp in partitions}
        self.assigned |= new
        self.store.restore({p for _, p in new})
        log.info("assigned %s; restored %d dedup entries", sorted(new), len(self.store))

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._commit(self.loop.take_ready(), synchronous=True)
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self.assigned -= gone
        still = {p for _, p in self.assigned}
        self.store.forget({p for _, p in gone} - still)
        if self.processor.reorderer is not None:
            for tp in gone:
                self.processor.reorderer.discard(tp)
        self.loop.forget()  # unfinished records are read again by the next owner
        self._held_back = [r for r in self._held_back
                           if (r[0].topic, r[0].partition) not in gone]
        # librdkafka keeps a partition paused across its revocation: assigned back after
        # the sink recovered (release() resumes only the current assignment), it would
        # never be fetched again. Backpressure pauses it anew if the sink is still down.
        with contextlib.suppress(KafkaException):
            consumer.resume(partitions)
        self.metrics.inc("cdc_worker_rebalances_total", sink=self.sink)
        log.info("revoked %s", sorted(gone))

    # -- backpressure (pipeline.backpressure) --------------------------------------------
    async def pause(self) -> int:
        partitions = self.consumer.assignment()
        self.consumer.pause(partitions)
        return len(partitions)

    async def keep_polling(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            messages = self.consumer.consume(self.settings.worker.batch_size, min(left, 0.5))
            self._held_back.extend(self._taken(messages))

    async def resume(self) -> None:
        self.consumer.resume(self.consumer.assignment())

    # -- the loop ------------------------------------------------------------------------
    async def run(self, stop: threading.Event) -> None:
        w = self.settings.worker
        wait = max(w.batch_wait_ms, 1) / 1000
        self.consumer.subscribe(list(self.settings.raw_topics()),
                                on_assign=self._on_assign, on_revoke=self._on_revoke)
        heap.settle()  # set up: freeze it (pipeline.heap)
        last_flush = last_evict = last_lag = time.monotonic()
        try:
            while not stop.is_set():
                # With drains in flight, only what is fetched already: decoding it then
                # overlaps the sink's writes (pipeline.worker_loop).
                messages = self.consumer.consume(
                    w.batch_size, 0 if self.loop.draining else wait)
                taken = time.perf_counter()
                records = self._taken(messages)
                if records:
                    decoded = await self.loop.decode(records)
                    if decoded is not None:  # a revocation may have come meanwhile
                        kept = [i for i, (r, _) in enumerate(records)
                                if (r.topic, r.partition) in self.assigned]
                        if len(kept) < len(records):
                            records = [records[i] for i in kept]
                            decoded = [decoded[i] for i in kept]
                    self.loop.accept(records, decoded)
                now = time.monotonic()
                if now - last_flush >= w.ordering.idle_flush_ms / 2000:
                    self.loop.flush_idle()
                    last_flush = now
                if now - last_lag >= 1.0:
                    self._report_lag()
                    last_lag = now
                if now - last_evict >= w.dedup.evict_interval_s:
                    await self.loop.evict()
                    last_evict = now
                if self._held_back:
                    self.loop.accept(self._held_back)
                    self._held_back = []
                self.loop.collect()  # drains that ended: their partitions may start again
                if records or self.processor.pending:
                    self.loop.start_drain()
                    self.metrics.inc("cdc_worker_batches_total")
                    # busy time per batch, without the wait for it (``cdc tune``'s service time)
                    self.metrics.observe_ms("cdc_worker_batch_processing",
                                            (time.perf_counter() - taken) * 1000)
                # Never spin on an empty queue while drains run, and read ahead at most a
                # batch beyond them (memory stays bounded, also while one partition's
                # drain is slow and the others' keep ending).
                if self.loop.draining and not records:
                    await self.loop.wait_any()
                while self.loop.draining and self.processor.pending >= w.batch_size:
                    await self.loop.wait_any()
        finally:
            with contextlib.suppress(Exception):
                await self.loop.finish()
            with contextlib.suppress(Exception):
                await self.loop.drain()
                self._commit(self.loop.take_ready(), synchronous=True)
            self.consumer.close()
            for sink in self.processor.sinks:
                await sink.close()
            close = getattr(self.seen, "close", None)
            if close is not None:
                close()

    @staticmethod
    def _taken(messages: list[Any]) -> list[tuple[RawRecord, tuple[str, int, int]]]:
        """The records of a ``consume``; a refused login raises, other errors are logged."""
        for m in messages:
            error = m.error()
            if error is not None:
                if error.code() in AUTH_ERRORS:
                    raise kafka_failure(error, "consuming the raw topics")
                log.warning("consumer: %s", error)
        return [KafkaSinkWorker._record(m) for m in messages if m.error() is None]

    def _report_lag(self) -> None:
        """Records in the log (as last fetched) not yet consumed, per topic."""
        if not self.assigned:
            return
        lag: dict[str, int] = {}
        try:
            positions = self.consumer.position(
                [TopicPartition(t, p) for t, p in sorted(self.assigned)])
            for tp in positions:
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and high >= 0:
                    lag[tp.topic] = lag.get(tp.topic, 0) + max(0, high - tp.offset)
        except KafkaException as exc:
            log.debug("consumer lag unknown: %s", exc)
            return
        for topic, records in lag.items():
            self.metrics.set("cdc_worker_consumer_lag_records", records, topic=topic)

    @staticmethod
    def _record(message: Any) -> tuple[RawRecord, tuple[str, int, int]]:
        record = RawRecord(
            topic=message.topic(), partition=message.partition(), offset=message.offset(),
            key=message.key(), value=message.value(),
            timestamp_ms=message.timestamp()[1],
            headers=tuple((k, bytes(v or b"")) for k, v in (message.headers() or ())),
        )
        return record, (record.topic, record.partition, record.offset)

    async def _commit_async(self, ready: list[tuple[str, int, int]]) -> None:
        self._commit(ready, synchronous=False)

    def _commit(self, ready: list[tuple[str, int, int]], synchronous: bool) -> None:
        newest: dict[tuple[str, int], int] = {}
        for topic, partition, offset in ready:
            newest[(topic, partition)] = offset
        if not newest:
            return
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in newest.items()]
        try:
            if synchronous:
                self.consumer.commit(offsets=offsets, asynchronous=False)
            else:
                self.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            # Not fatal: the records are written; a later commit covers them, and a
            # crash before it only means they are read (and skipped by dedup) again.
            log.warning("offset commit failed: %s", exc)
