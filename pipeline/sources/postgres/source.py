"""PostgreSQL capture: logical replication (pgoutput) -> Kafka raw topics.

Events are published as soon as they are decoded, so a transaction of any size streams
through the producer's bounded queue. The slot's confirmed flush LSN moves to a transaction's
end only after Kafka acknowledged every event of it and of all earlier transactions
(see ``pipeline.capture.delivery``). After a crash the server resends everything past that point:
nothing committed is lost, and what Kafka already had arrives again (sinks are idempotent).
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from typing import Any

import psycopg2
from psycopg2.extras import LogicalReplicationConnection

from pipeline.capture.delivery import DeliveryTracker, TransactionDelivery
from pipeline.capture.publisher import EventPublisher, ensure_topics
from pipeline.config import KafkaSettings, PostgresSettings
from pipeline.errors import RetriableError
from pipeline.events import UNAVAILABLE_VALUE, encode_value
from pipeline.metrics import Metrics
from pipeline.positions import Lsn
from pipeline.sources.postgres.envelope import (
    ChangeBuilder,
    EnvelopeWriter,
    TableShape,
    TransactionContext,
)
from pipeline.sources.postgres.pgoutput import (
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    PgoutputDecodeError,
    Relation,
    Truncate,
    Update,
    decode_message,
    insert_relation_oid,
    insert_row,
)
from pipeline.sources.postgres.slot import ReplicationSlot, connect, primary_key_columns, translate
from pipeline.sources.postgres.types import TypeResolver
from pipeline.sources.postgres.unconverted import UnconvertedValues

log = logging.getLogger(__name__)

POLL_EVERY = 512
SESSION = (
    "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=iso_8601 "
    "-c extra_float_digits=3 -c bytea_output=hex"
)  # serve producer callbacks every N replication messages


class PostgresCapture:
    """Streams one replication slot into raw topics until ``stop`` is set."""

    def __init__(
        self,
        pg: PostgresSettings,
        kafka: KafkaSettings,
        metrics: Metrics,
        publisher: EventPublisher | None = None,
    ) -> None:
        self.pg = pg
        self.kafka = kafka
        self.metrics = metrics
        self.publisher = publisher or EventPublisher(kafka)
        self.tracker = DeliveryTracker(on_complete=self._acknowledged)
        self.shapes: dict[int, TableShape] = {}
        self.topics: dict[int, str] = {}
        self._counts: dict[tuple[int, str], int] = {}
        self.types = TypeResolver()
        self.unconverted = UnconvertedValues()
        self._now_ms = str(int(time.time() * 1000)).encode()
        self._last_commit_ts_us = 0
        self._txn: TransactionDelivery | None = None
        self._ctx: TransactionContext | None = None
        self._last_commit: int | None = None
        self._confirmed: Lsn | None = None
        self._last_feedback = 0.0

    # -- lifecycle -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Prepare slot and topics, then stream. Raises RetriableError on connection loss."""
        ReplicationSlot(self.pg).prepare()
        ensure_topics(self.kafka, [self.kafka.raw_topic(t) for t in self.pg.tables])
        dsn = self.pg.dsn.get_secret_value()
        catalog = connect(dsn)
        catalog.autocommit = True
        # The decoding session, not the writer, formats the values: pin the formats the
        # converters expect (UTC timestamps, ISO dates, exact floats, hex bytea).
        repl = connect(dsn, connection_factory=LogicalReplicationConnection, options=SESSION)
        self.builder = ChangeBuilder(self.kafka.topic_prefix, catalog.info.dbname)
        self.writer = EnvelopeWriter(self.kafka.topic_prefix, catalog.info.dbname)
        try:
            cur = repl.cursor()
            cur.start_replication(
                slot_name=self.pg.slot,
                decode=False,
                options={"proto_version": "1", "publication_names": self.pg.publication},
            )
            log.info("streaming slot %s (publication %s)", self.pg.slot, self.pg.publication)
            self._stream(cur, catalog, stop)
        except psycopg2.Error as exc:
            raise translate(exc, "streaming from the replication slot") from exc
        finally:
            self._drain()
            for conn in (repl, catalog):
                with contextlib.suppress(psycopg2.Error):
                    conn.close()

    def _stream(self, cur: Any, catalog: Any, stop: threading.Event) -> None:
        received = 0
        while not stop.is_set():
            msg = cur.read_message()
            if msg is not None:
                self._handle(msg.payload, msg.data_start, catalog)
                received += 1
                if received % POLL_EVERY == 0:
                    self.publisher.poll(0)
                    self._flush_counts()
                    self._feedback(cur)
                continue
            self.publisher.poll(0)
            self._flush_counts()
            if self.tracker.in_flight == 0 and cur.wal_end:
                self.tracker.idle(Lsn(cur.wal_end))
            self._feedback(cur)
            select.select([cur], [], [], 0.02)
        self._drain()
        self._flush_counts()
        self._feedback(cur, force=True)

    def _drain(self) -> None:
        """Give Kafka a bounded time to acknowledge what is queued (confirmation follows)."""
        remaining = self.publisher.flush(10.0)
        if remaining:
            log.warning("%d events not yet acknowledged by Kafka at shutdown", remaining)

    def _feedback(self, cur: Any, force: bool = False) -> None:
        confirmable = self.tracker.confirmable()
        now = time.monotonic()
        advanced = confirmable is not None and confirmable != self._confirmed
        if not (force or advanced or now - self._last_feedback >= self.pg.status_interval_s):
            return
        if advanced and not force and now - self._last_feedback < 0.05:
            return  # at most ~20 status messages a second under load
        if confirmable is not None:
            cur.send_feedback(
                write_lsn=int(confirmable), flush_lsn=int(confirmable), apply_lsn=int(confirmable)
            )
            self._confirmed = confirmable
            self.metrics.set("cdc_capture_confirmed_lsn", int(confirmable))
        else:
            cur.send_feedback()
        self._last_feedback = now
        if self._ctx is not None or self.tracker.in_flight:
            lag = max(0.0, time.time() - (self._last_commit_ts_us / 1e6))
        else:
            lag = 0.0
        self.metrics.set("cdc_replication_lag_seconds", lag)

    def _acknowledged(self, txn: TransactionDelivery) -> None:
        """A transaction Kafka fully acknowledged: commit-to-Kafka latency."""
        if txn.commit_ts_us:
            acked_ms = (txn.acked_at or time.time()) * 1000
            self.metrics.observe_ms(
                "cdc_commit_to_kafka_latency", max(0.0, acked_ms - txn.commit_ts_us / 1000)
            )

    # -- messages ---------------------------------------------------------------------------
    def _handle(self, payload: bytes, lsn: int, catalog: Any) -> None:
        oid = insert_relation_oid(payload)
        if oid is not None and self._txn is not None:
            shape = self.shapes.get(oid)
            if shape is not None:
                try:
                    row = insert_row(payload, shape.names, shape.converters, UNAVAILABLE_VALUE)
                except PgoutputDecodeError:
                    pass  # anything unusual: the full decoder below says what
                else:
                    self._created(row, shape, lsn)
                    return
        msg = decode_message(payload)
        kind = type(msg)
        if kind is Insert or kind is Update or kind is Delete:
            self._change(msg, lsn)  # type: ignore[arg-type]
        elif kind is Begin:
            self._begin(msg)  # type: ignore[arg-type]
        elif kind is Commit:
            self._commit(msg)  # type: ignore[arg-type]
        elif kind is Relation:
            self._relation(msg, catalog)  # type: ignore[arg-type]
        elif kind is Truncate:
            self._truncate(msg, lsn)  # type: ignore[arg-type]
        elif kind is Message:
            self.metrics.inc("cdc_capture_logical_messages_total")
        # Type and Origin carry nothing a raw topic needs.

    def _begin(self, msg: Begin) -> None:
        self._txn = self.tracker.begin(msg.commit_ts_us)
        self._ctx = TransactionContext(msg.xid, msg.commit_ts_us, self._last_commit)
        self.writer.begin(self._ctx)
        self._last_commit_ts_us = msg.commit_ts_us

    def _commit(self, msg: Commit) -> None:
        assert self._txn is not None, "Commit without Begin"
        self.tracker.commit(self._txn, msg.end_lsn)
        self._last_commit = int(msg.commit_lsn)
        self._txn = None
        self._ctx = None
        self.metrics.inc("cdc_capture_transactions_total")

    def _relation(self, msg: Relation, catalog: Any) -> None:
        with catalog.cursor() as cur:
            pk = primary_key_columns(cur, msg.oid)
            types = [self.types.resolve(cur, c.type_oid) for c in msg.columns]
        shape = self.shapes[msg.oid] = TableShape.from_relation(
            msg, pk, types, self.pg.decimal_handling_mode, self.unconverted)
        self.topics[msg.oid] = self.kafka.raw_topic(shape.table_id)
        columns = [c.name for c in msg.columns]
        log.info("table %s.%s: columns %s", msg.namespace, msg.name, columns)

    def _shape(self, oid: int) -> TableShape:
        shape = self.shapes.get(oid)
        if shape is None:
            raise RetriableError(f"change for relation {oid} arrived before its Relation message")
        return shape

    def _change(self, msg: Insert | Update | Delete, lsn: int) -> None:
        shape = self._shape(msg.relation_oid)
        txn = self._txn
        assert txn is not None
        topic = self.topics[msg.relation_oid]
        publish = self.publisher.publish
        counts = self._counts
        if type(msg) is Insert:
            self._created(shape.row(msg.new), shape, lsn)
            return
        for op, key, value in self.writer.encode(msg, shape, lsn, self._now_ms):
            txn.pending += 1
            publish(topic, key, value, txn)
            if op == "d" and self.kafka.tombstones_on_delete:
                txn.pending += 1
                publish(topic, key, None, txn)
            counted = (shape.oid, op)
            counts[counted] = counts.get(counted, 0) + 1

    def _created(self, after: dict[str, Any], shape: TableShape, lsn: int) -> None:
        txn = self._txn
        assert txn is not None
        key, value = self.writer.created(after, shape, lsn, self._now_ms)
        txn.pending += 1
        self.publisher.publish(self.topics[shape.oid], key, value, txn)
        counted = (shape.oid, "c")
        self._counts[counted] = self._counts.get(counted, 0) + 1

    def _truncate(self, msg: Truncate, lsn: int) -> None:
        assert self._ctx is not None and self._txn is not None
        for oid in msg.relation_oids:
            shape = self._shape(oid)
            event = self.builder.truncate(shape, self._ctx, lsn, int(time.time() * 1000))
            self.publisher.publish(self.topics[oid], None, encode_value(event),
                                   self.tracker.sent(self._txn))
            self.metrics.inc("cdc_capture_events_total", table=shape.table_id, op="t")

    def _flush_counts(self) -> None:
        """Per-event counts are kept in a plain dict on the hot path, moved to metrics here."""
        for (oid, op), n in self._counts.items():
            self.metrics.inc("cdc_capture_events_total", n, table=self.shapes[oid].table_id, op=op)
        self._counts.clear()
        for type_name, n in self.unconverted.drain().items():
            self.metrics.inc("cdc_capture_unconverted_values_total", n, type=type_name)
        self._now_ms = str(int(time.time() * 1000)).encode()
