"""The outbox relay as a :class:`~pipeline.capture.source.ChangeSource` (``capture.source:
outbox``), for databases without logical replication.

Each ``read`` claims a batch of whole aggregates (:mod:`pipeline.sources.outbox.claims`) in a
transaction that stays open, and hands the capture loop one record per event, each followed
by a checkpoint. The loop confirms a checkpoint only after Kafka acknowledged that event and
every earlier one; when the batch's last event is confirmed, the relay marks the batch SENT
(or deletes it) and commits, which also releases its aggregates to the other relays. Holding
the claim open until then is what makes it at least once without a second bookkeeping: a
relay killed between Kafka's acknowledgement and the commit loses its transaction, the events
stay PENDING, and the next claim (of any relay) publishes them again with the same ``id``
header, by which consumers drop the repeat.

Kafka refusing an event (too large for its topic, say) is reported by the loop through
:meth:`OutboxRelay.refused`: the event's ``retry_count`` goes up with the error kept in
``last_error``, it is retried after ``outbox.retry_delay_s`` (doubling) and becomes FAILED
after ``outbox.max_attempts``. The aggregate's later events of the same batch stay PENDING
and follow it, so its order holds; a FAILED event holds them back until ``cdc outbox retry``
(unless ``outbox.failed_holds_aggregate`` is off). An event that cannot become a record at all
(payload not JSON, no topic name, too large) is FAILED at once with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import psycopg2

from pipeline.capture.publisher import ensure_topics
from pipeline.capture.source import Checkpoint, Item
from pipeline.config import KafkaSettings, OutboxSettings, PostgresSettings
from pipeline.errors import BadOutboxEvent
from pipeline.metrics import Metrics
from pipeline.positions import OutboxPosition
from pipeline.sources.outbox.claims import ClaimedEvent, OutboxTable
from pipeline.sources.outbox.router import OutboxRouter
from pipeline.sources.postgres.slot import connect, translate

log = logging.getLogger(__name__)

#: Seconds ``read`` waits when a batch is in flight (the loop serves Kafka's answers between).
IN_FLIGHT_WAIT_S = 0.002


@dataclass
class Batch:
    """One claim: what was published (by index), what was refused, what was invalid."""

    number: int
    published: list[ClaimedEvent] = field(default_factory=list)
    invalid: list[tuple[str, str]] = field(default_factory=list)
    held: int = 0  # events not published: an earlier event of their aggregate failed here
    refused: dict[int, str] = field(default_factory=dict)


class OutboxRelay:
    """Publishes the outbox table's events, whole aggregates per claim."""

    def __init__(self, pg: PostgresSettings, settings: OutboxSettings, kafka: KafkaSettings,
                 router: OutboxRouter, metrics: Metrics) -> None:
        assert settings.table is not None
        self.pg = pg
        self.settings = settings
        self.kafka = kafka
        self.router = router
        self.metrics = metrics
        self.name = f"outbox relay {settings.table}"
        self._batches = 0  # never reset: positions keep growing across sessions
        self._batch: Batch | None = None
        self._table: OutboxTable | None = None
        self._topics: set[str] = set()
        self._next_look = 0.0

    # -- ChangeSource --------------------------------------------------------------------
    def open(self) -> list[str]:
        conn = connect(self.pg.dsn.get_secret_value())
        self._table = OutboxTable(conn, self.settings, self.router.extra_columns)
        try:
            self._table.check()
        except psycopg2.Error as exc:
            raise translate(exc, f"reading outbox table {self.settings.table}") from exc
        self._batch = None
        log.info("relaying outbox table %s", self.settings.table)
        return []  # topics are created as aggregate types appear

    def read(self, max_items: int) -> list[Item]:
        if self._batch is not None:  # waiting for Kafka's answers about the claim
            time.sleep(IN_FLIGHT_WAIT_S)
            return []
        now = time.monotonic()
        if now < self._next_look:
            time.sleep(min(0.02, self._next_look - now))
            return []
        table = self._table
        assert table is not None
        try:
            claimed = table.claim()
            if not claimed:
                table.release()
                self._next_look = now + self.settings.poll_interval_s
                return []
            self._batches += 1
            batch = Batch(self._batches)
            items = self._items(batch, claimed)
            if not batch.published:  # nothing to wait for
                self._finish(batch)
                return []
        except psycopg2.Error as exc:
            raise translate(exc, f"claiming events of outbox table {self.settings.table}") \
                from exc
        self._batch = batch
        return items

    def refused(self, position: OutboxPosition, reason: str | None) -> None:
        batch = self._batch
        if batch is not None and position.batch == batch.number:
            batch.refused[position.index] = reason or "refused by Kafka"

    def confirm(self, position: OutboxPosition) -> None:
        batch = self._batch
        if batch is None or position.batch != batch.number or \
                position.index < len(batch.published) - 1:
            return
        try:
            self._finish(batch)
        except psycopg2.Error as exc:
            raise translate(exc, f"marking events of outbox table {self.settings.table}") \
                from exc
        self._batch = None

    def keepalive(self) -> None:
        """Nothing to do: the claim's transaction may wait (mind PostgreSQL's
        ``idle_in_transaction_session_timeout``: past it the claim is lost and re-sent)."""

    def close(self) -> None:
        if self._table is not None:
            with contextlib.suppress(psycopg2.Error):
                self._table.release()
                self._table.conn.close()
        self._table = None
        self._batch = None  # what it held is PENDING again: the next claim re-sends it

    def forget_positions(self) -> None:
        """Nothing is kept in Kafka: the outbox table's statuses are the relay's position."""

    # -- a batch -------------------------------------------------------------------------
    def _items(self, batch: Batch, claimed: list[ClaimedEvent]) -> list[Item]:
        items: list[Item] = []
        stopped: set[tuple[str, str]] = set()  # aggregates whose next events must wait
        new_topics: set[str] = set()
        hold = self.settings.failed_holds_aggregate
        for c in claimed:
            aggregate = (c.event.aggregate_type, c.event.aggregate_id)
            if aggregate in stopped:
                batch.held += 1
                continue
            try:
                record = self.router.route(c.event)
            except BadOutboxEvent as exc:
                log.warning("outbox event %s is FAILED: %s", c.event.id, exc)
                batch.invalid.append((c.event.id, str(exc)))
                if hold:
                    stopped.add(aggregate)
                continue
            if record[0] not in self._topics:
                new_topics.add(record[0])
            items.append(record)
            items.append(Checkpoint(OutboxPosition(batch.number, len(batch.published)),
                                    c.created_us))
            batch.published.append(c)
        if new_topics:
            ensure_topics(self.kafka, sorted(new_topics))
            self._topics |= new_topics
        return items

    def _finish(self, batch: Batch) -> None:
        """Mark what Kafka acknowledged SENT, count refusals, commit. After a refused event,
        its aggregate's later events of the batch stay PENDING: they are published again
        after it, keeping the aggregate's order (consumers drop the repeats by id)."""
        sent: list[str] = []
        refused: list[tuple[ClaimedEvent, str]] = []
        broken: set[tuple[str, str]] = set()
        for index, c in enumerate(batch.published):
            aggregate = (c.event.aggregate_type, c.event.aggregate_id)
            reason = batch.refused.get(index)
            if reason is not None:
                log.warning("Kafka refused outbox event %s (attempt %d of %d): %s", c.event.id,
                            c.retry_count + 1, self.settings.max_attempts, reason)
                refused.append((c, reason))
                broken.add(aggregate)
            elif aggregate not in broken:
                sent.append(c.event.id)
        assert self._table is not None
        failed = self._table.finish(sent, refused, batch.invalid)
        m = self.metrics
        m.inc("cdc_outbox_events_total", len(sent), outcome="sent")
        if refused:
            m.inc("cdc_outbox_events_total", len(refused), outcome="refused")
        if failed or batch.invalid:
            m.inc("cdc_outbox_events_total", failed + len(batch.invalid), outcome="failed")
        resend = len(batch.published) - len(sent) - len(refused)
        if resend:
            m.inc("cdc_outbox_events_total", resend, outcome="resent_later")
