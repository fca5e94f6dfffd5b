"""The one capture loop every source runs in: read -> publish -> track -> confirm.

Per session (``open`` .. ``close`` of the source):

* every record the source hands over is published at once (the producer's queue is bounded:
  when Kafka is slow, publishing waits and asks the source to keep its connection alive);
* every record is registered with the unit it belongs to (records up to a ``Checkpoint``);
* the source is told to ``confirm`` the highest checkpoint whose every earlier record Kafka
  acknowledged, never beyond, and never backwards.

A ``RetriableError`` (the database or Kafka went away) ends the session; the loop waits with
the one :class:`~pipeline.retry.Backoff` and opens a new one, which starts after the last
confirmed position: what Kafka had not acknowledged is read and published again (at least
once; the sinks are idempotent). With ``retry_timeout_s`` an outage (no session reaching its
first read) lasting longer becomes a ``PermanentError``. A producer Kafka answers nothing of
for ``kafka.producer_stall_s`` ends the session the same way, and is replaced first
(:mod:`pipeline.capture.stall`). Anything else (a setup problem, a
refused record) stops capture with its message: retrying could not help. A source that
defines ``refused(position, reason)`` (the outbox relay) is told of a refused record instead,
and confirmation goes on past it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from confluent_kafka import KafkaException

from pipeline.capture.delivery import DeliveryTracker, TransactionDelivery
from pipeline.capture.publisher import EventPublisher, ensure_topics
from pipeline.capture.source import EVERY_PARTITION, ChangeSource, Checkpoint, HeadedRecord
from pipeline.capture.stall import ProducerStalled, StallWatch
from pipeline.capture.throughput import ThroughputLog
from pipeline.config import KafkaSettings
from pipeline.errors import PermanentError, RetriableError, SourceExhausted
from pipeline.metrics import Metrics
from pipeline.retry import Backoff

log = logging.getLogger(__name__)

#: Items asked of the source per read; delivery callbacks are served between reads.
READ_BATCH = 512
#: How long a session's end waits for Kafka to acknowledge what is queued.
DRAIN_S = 10.0


class CaptureLoop:
    """Runs one source until ``stop`` is set; reconnects after transient failures."""

    def __init__(
        self,
        source: ChangeSource,
        publisher: EventPublisher,
        kafka: KafkaSettings,
        metrics: Metrics,
        backoff: Backoff | None = None,
        create_topics: bool = True,
        retry_timeout_s: float | None = None,
        throughput_log_s: float | None = None,
    ) -> None:
        self.source = source
        self.publisher = publisher
        self.kafka = kafka
        self.metrics = metrics
        self.backoff = backoff or Backoff()
        self.create_topics = create_topics
        self.retry_timeout_s = retry_timeout_s
        self._outage_since: float | None = None  # first failure since the last good session
        self.confirmed: Any = None  # the highest position confirmed to the source
        self._partitions: dict[str, int] = {}
        #: units the last session ended with unacknowledged (see ``run``)
        self._unacknowledged = 0
        self.throughput = ThroughputLog(source.name, throughput_log_s)

    def run(self, stop: threading.Event) -> None:
        """Sessions until ``stop``; raises only what retrying cannot fix."""
        while not stop.is_set():
            self.backoff.started()
            try:
                try:
                    self.session(stop)
                except SourceExhausted as done:
                    if self._unacknowledged:
                        # finishing (an initial_only snapshot drops its slot) would lose
                        # them: read them again, as after a crash
                        raise RetriableError(
                            f"{self.source.name} ended with {self._unacknowledged} "
                            "transaction(s) or chunk(s) Kafka has not acknowledged; reading "
                            "them again") from done
                    log.info("%s: %s", self.source.name, done)
                    finish = getattr(self.source, "finish", None)
                    if finish is not None:
                        finish()
                    return
            except RetriableError as exc:
                if stop.is_set():  # asked to stop while waiting: no retry follows
                    log.info("%s stopped while interrupted: %s", self.source.name, exc)
                    return
                self.metrics.inc("cdc_capture_errors_total", kind="retriable")
                self._give_up_after_timeout(exc)
                delay = self.backoff.next_delay()
                log.warning("%s interrupted, resuming after the last confirmed position in "
                            "%.1fs: %s", self.source.name, delay, exc)
                stop.wait(delay)

    def _give_up_after_timeout(self, exc: RetriableError) -> None:
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
        if self.retry_timeout_s is not None and now - self._outage_since >= self.retry_timeout_s:
            raise PermanentError(
                f"{self.source.name}: gave up after {now - self._outage_since:.0f}s of retrying "
                f"(errors.retry_timeout_s = {self.retry_timeout_s:g}): {exc}") from exc

    def session(self, stop: threading.Event) -> None:
        """One open .. close of the source: stream until ``stop`` or an error."""
        refused = getattr(self.source, "refused", None)
        tracker = DeliveryTracker(
            on_complete=self._acknowledged,
            on_refused=None if refused is None else lambda txn: refused(txn.end_lsn, txn.error))
        watch = _OldestUnitWatch(tracker, self.kafka.producer_stall_s)

        def while_waiting() -> None:  # for room in the producer's full queue
            self.source.keepalive()
            watch.look()

        try:
            topics = self.source.open()
            if self.create_topics:
                ensure_topics(self.kafka, topics)
            self.publisher.while_waiting = while_waiting
            self._stream(tracker, stop, watch)
        except ProducerStalled:
            self.publisher.renew()  # before the drain below: nothing to wait for in it
            raise
        finally:
            self.publisher.while_waiting = lambda: None
            tracker.abandon_open()
            try:
                self._drain(tracker)
            finally:
                self._unacknowledged = tracker.in_flight
                self.source.close()

    def _stream(self, tracker: DeliveryTracker, stop: threading.Event,
                watch: _OldestUnitWatch) -> None:
        publish = self.publisher.publish
        produce = self.publisher.produce
        sent = tracker.sent
        unit = tracker.begin()
        while not stop.is_set():
            items = self.source.read(READ_BATCH)
            self._outage_since = None  # connected and reading: any outage is over
            records = 0
            for item in items:
                if type(item) is tuple:
                    records += 1
                    if len(item) == 4:
                        topic, key, value, partition = item  # type: ignore[misc]
                        if partition == EVERY_PARTITION:
                            for p in range(self._partition_count(topic)):
                                publish(topic, key, value, sent(unit), p)
                        else:
                            unit.pending += 1  # as sent(unit), inline: once per record
                            try:
                                produce(topic, value, key, partition, unit)
                            except (BufferError, KafkaException):  # publish() waits or says why
                                publish(topic, key, value, unit, partition)
                    else:  # with headers
                        self._publish_headed(item, sent(unit))  # type: ignore[arg-type]
                else:
                    assert isinstance(item, Checkpoint)
                    unit.commit_ts_us = item.commit_ts_us
                    tracker.commit(unit, item.position)
                    unit = tracker.begin()
            self.publisher.poll(0)
            self._confirm(tracker)
            watch.look()
            self.throughput.add(records)
            self.throughput.tick(self.confirmed)

    def _publish_headed(self, record: HeadedRecord, unit: TransactionDelivery) -> None:
        topic, key, value, partition, headers = record
        if partition == EVERY_PARTITION:
            count = self._partition_count(topic)
            unit.pending += count - 1  # ``unit`` came counted once
            for p in range(count):
                self.publisher.publish(topic, key, value, unit, p, headers)
        else:
            self.publisher.publish(topic, key, value, unit, partition, headers)

    def _partition_count(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            count = self._partitions[topic] = self.publisher.partitions(topic)
        return count

    def _confirm(self, tracker: DeliveryTracker) -> None:
        position = tracker.confirmable()  # raises DeliveryFailed if Kafka refused a record
        if position is None:
            return
        # Positions of one kind are ordered; a new kind (a snapshot's chunks, then the
        # stream's LSNs) starts a new order.
        if (self.confirmed is None or type(position) is not type(self.confirmed)
                or position > self.confirmed):
            self.source.confirm(position)
            self.confirmed = position

    def _drain(self, tracker: DeliveryTracker) -> None:
        """Give Kafka a bounded time to acknowledge what is queued, then confirm it."""
        remaining = self.publisher.flush(DRAIN_S)
        if remaining:
            log.warning("%d records not yet acknowledged by Kafka when %s stopped; they are "
                        "read again from the source", remaining, self.source.name)
        try:
            while True:  # a snapshot's last position, then the stream's (one kind a call)
                before = self.confirmed
                self._confirm(tracker)
                if self.confirmed is before:
                    break
        except RetriableError as exc:
            log.warning("could not confirm the last position of %s: %s", self.source.name, exc)

    def _acknowledged(self, txn: TransactionDelivery) -> None:
        """A unit Kafka fully acknowledged: commit-to-Kafka latency."""
        if txn.commit_ts_us:
            acked_ms = (txn.acked_at or time.time()) * 1000
            self.metrics.observe_ms(
                "cdc_commit_to_kafka_latency", max(0.0, acked_ms - txn.commit_ts_us / 1000)
            )


class _OldestUnitWatch:
    """The stall rule of the capture loop: progress is the oldest unit it waits for being
    another one than at the last look, or holding another number of unanswered records
    (an answer takes one off, a record published to a unit still being read adds one).

    A producer that stops answering shows no change once the source stops feeding the
    oldest unit (it ended, or the queue is full and publishing waits), and its records
    reach the limit; a slow Kafka changes the count at almost every look. Nothing here
    counts per record."""

    __slots__ = ("tracker", "clock", "head", "pending")

    def __init__(self, tracker: DeliveryTracker, limit_s: float) -> None:
        self.tracker = tracker
        self.clock = StallWatch(limit_s, "of the oldest transaction capture waits for")
        self.head: TransactionDelivery | None = None
        self.pending = 0

    def look(self) -> None:
        head = self.tracker.head
        if head is None:
            self.clock.observe(0)
            return
        pending = head.pending
        progressed = head is not self.head or pending != self.pending
        self.head, self.pending = head, pending
        self.clock.observe(pending, progressed)
