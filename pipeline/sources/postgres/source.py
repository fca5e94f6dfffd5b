"""PostgreSQL logical replication (pgoutput) as a :class:`~pipeline.capture.source.ChangeSource`.

Events are encoded as soon as they are decoded and handed to the capture loop, so a
transaction of any size streams through the producer's bounded queue. Each transaction ends
with a checkpoint at its end LSN: the loop confirms it to the slot only after Kafka
acknowledged every record of it and of all earlier transactions. After a crash the server
resends everything past that point: nothing committed is lost, and what Kafka already had
arrives again (the sinks are idempotent).

Only the tables listed in ``postgres.tables`` are published, whatever the publication holds
(it may be shared with another tool, or be ``FOR ALL TABLES``); a leaf partition's changes
are published under its listed partitioned root.
"""

from __future__ import annotations

import contextlib
import logging
import re
import select
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import psycopg2
from psycopg2 import sql
from psycopg2.extras import LogicalReplicationConnection

from pipeline.capture.offsets import OffsetStore
from pipeline.capture.source import ANY_PARTITION, EVERY_PARTITION, Checkpoint, Item
from pipeline.config import KafkaSettings, PostgresSettings
from pipeline.errors import RetriableError, SourceExhausted, SourceSetupError
from pipeline.events import UNAVAILABLE_VALUE, encode_value
from pipeline.metrics import Metrics
from pipeline.positions import Lsn, SnapshotPosition
from pipeline.sources.postgres.backfill import Backfills
from pipeline.sources.postgres.envelope import (
    ChangeBuilder,
    EnvelopeWriter,
    RecordEmitter,
    TableShape,
    TransactionContext,
)
from pipeline.sources.postgres.parallel_snapshot import ParallelSnapshot
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
    take_replaced_values,
)
from pipeline.sources.postgres.signals import (
    INTERNAL_PREFIXES,
    SIGNAL_PREFIX,
    WATERMARK_PREFIX,
    SignalError,
    from_message,
)
from pipeline.sources.postgres.signals import parse as parse_signal
from pipeline.sources.postgres.slot import (
    RETAINED_WAL_SQL,
    ReplicationSlot,
    connect,
    primary_key_columns,
    translate,
)
from pipeline.sources.postgres.snapshot import TableSnapshot
from pipeline.sources.postgres.transactions import TransactionMetadata
from pipeline.sources.postgres.types import TypeResolver
from pipeline.sources.postgres.unconverted import UnconvertedValues

if TYPE_CHECKING:
    from pipeline.sources.outbox.logical import LogicalOutbox

log = logging.getLogger(__name__)

#: The decoding session, not the writer, formats the values: pin the formats the
#: converters expect (UTC timestamps, ISO dates, exact floats, hex bytea).
SESSION = (
    "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=iso_8601 "
    "-c extra_float_digits=3 -c bytea_output=hex -c client_encoding=UTF8"
)
#: Seconds between saves of the confirmed position to the offsets topic.
SAVE_EVERY_S = 1.0
#: Backfill rows published per read of the stream (bounds the stream's added latency).
BACKFILL_SLICE = 256
#: Seconds between measurements of the WAL the slot retains.
SLOT_MEASURE_S = 10.0


def _replication_connection(dsn: str) -> Any:
    """The replication session, in UTF-8; in ``SQL_ASCII`` on a ``SQL_ASCII`` database.

    Such a database stores any bytes, and PostgreSQL checks them as UTF-8 before it sends
    them to a UTF-8 session: the first byte that is not stops the walsender, on every
    restart. A ``SQL_ASCII`` session gets them as stored, and the decoder publishes each such
    byte as U+FFFD (``pgoutput.take_replaced_values``)."""
    conn = connect(dsn, connection_factory=LogicalReplicationConnection, options=SESSION)
    if conn.get_parameter_status("server_encoding") != "SQL_ASCII":
        return conn
    conn.close()
    log.warning("the database's encoding is SQL_ASCII: its text is read as UTF-8, and bytes "
                "that are not UTF-8 are published as U+FFFD")
    return connect(dsn, connection_factory=LogicalReplicationConnection,
                   options=SESSION.replace("client_encoding=UTF8", "client_encoding=SQL_ASCII"))


class PostgresSource:
    """One replication slot as a change source."""

    def __init__(self, pg: PostgresSettings, kafka: KafkaSettings, metrics: Metrics,
                 outbox: LogicalOutbox | None = None, schemas_dir: Path | None = None) -> None:
        self.pg = pg
        #: Where the Avro schemas are (``evolution.schemas_dir``): snapshot reader processes
        #: write their values as capture does (``kafka.value_format``).
        self.schemas_dir = schemas_dir
        #: Routes the outbox table's rows and the outbox messages (``outbox`` section).
        self.outbox = outbox
        self._outbox_shapes: dict[int, TableShape] = {}
        self.kafka = kafka
        self.metrics = metrics
        self.name = f"postgres slot {pg.slot}"
        self.listed = frozenset(pg.tables)
        #: postgres.skipped_operations (empty: the hot path only tests its truth).
        self._skipped = frozenset(pg.skipped_operations)
        self.offsets = OffsetStore(kafka, {"source": "postgres", "slot": pg.slot})
        self.snapshot_offsets = OffsetStore(kafka, {"source": "postgres-snapshot",
                                                    "slot": pg.slot})
        self._snapshot: TableSnapshot | ParallelSnapshot | None = None
        self._snapshot_done_here = False  # an initial_only snapshot completed in this process
        self._resumed: Lsn | None = None
        self._include = [re.compile(p) for p in pg.message_prefix_include]
        self._exclude = [re.compile(p) for p in pg.message_prefix_exclude]
        self.shapes: dict[int, TableShape] = {}
        self.topics: dict[int, str] = {}
        self.ignored: set[int] = set()  # relations in the publication but not listed
        self._counts: dict[tuple[int, str], int] = {}
        self.types = TypeResolver()
        self.unconverted = UnconvertedValues()
        self.backfills = Backfills(pg, kafka, metrics, SESSION, self.unconverted)
        self._signal_oid: int | None = None  # postgres.signal_table's relation
        self._emitter: RecordEmitter | None = None  # set when opened (see open())
        self._signal_columns: list[str] = []
        self._cur: Any = None
        self._repl: Any = None
        self._catalog: Any = None
        self._reset_stream_state()

    def _reset_stream_state(self) -> None:
        self._out: list[Item] = []
        self._now_ms = str(int(time.time() * 1000)).encode()
        self._ctx: TransactionContext | None = None
        #: the commit record's LSN of the transaction being read (its Begin's final_lsn)
        self._commit_at = 0
        self._txn_meta: TransactionMetadata | None = None
        self._last_commit: int | None = None
        self._last_commit_ts_us = 0
        self._confirmed: Lsn | None = None
        self._checkpointed = 0  # highest position handed out as a checkpoint
        self._last_feedback = 0.0
        self._last_saved = 0.0
        self._next_heartbeat = 0.0
        self._next_measure = 0.0

    def forget_positions(self) -> None:
        """Forget what is kept in Kafka about this slot (its confirmed position, snapshot
        progress): for a slot dropped on purpose, so that its absence is no alarm."""
        self.offsets.forget()
        self.snapshot_offsets.forget()
        self.backfills.forget()

    # -- ChangeSource --------------------------------------------------------------------
    def open(self) -> list[str]:
        self._reset_stream_state()
        slot = ReplicationSlot(self._slot_settings())
        saved = self.offsets.load()
        mode = self.pg.snapshot_mode
        if mode == "initial_only" and (self.snapshot_offsets.load() or {}).get("complete"):
            if (not self.pg.initial_only_keep_slot and not self._snapshot_done_here
                    and slot.confirmed_position() is not None):
                log.warning("replication slot %s still exists and holds WAL: if no capture "
                            "streams from it, drop it (SELECT pg_drop_replication_slot('%s'))",
                            self.pg.slot, self.pg.slot)
            raise SourceExhausted("nothing to do: the snapshot is complete (snapshot_mode "
                                  "initial_only). To stream, set snapshot_mode: initial")
        exists = slot.prepare(saved_position=None if saved is None else saved.get("lsn"),
                              create_slot=mode == "never",
                              when_lost_start_over=mode == "when_needed")
        dsn = self.pg.dsn.get_secret_value()
        self._repl = _replication_connection(dsn)
        self._snapshot = None
        if not exists and mode == "incremental":
            # Recorded before the slot exists: a crash in between must not leave a slot
            # whose existing rows are never read.
            self.backfills.request_all(self.pg.tables)
            slot.prepare(create_slot=True)
        elif not exists:
            self._snapshot = self._snapshot_new_slot()
        else:
            progress = self.snapshot_offsets.load()
            if progress is None or progress.get("complete"):
                pass
            elif (self.pg.snapshot_resume == "incremental" and progress.get("lsn")
                  and mode != "initial_only"):  # initial_only does not stream: read the rest
                self._hand_snapshot_to_backfill(progress)
            else:
                # Streaming has not started, so the slot is still at its consistent point.
                point = progress.get("lsn")
                consistent = Lsn.parse(point) if point else slot.confirmed_position()
                assert consistent is not None
                self._snapshot = self._open_snapshot(consistent, None, progress)
        resumed = slot.confirmed_position()
        # Our sequence[0] is the previous commit's end LSN; the slot's confirmed position is
        # the end of the last transaction confirmed before the restart (or a later idle
        # position): never unknown, and never before a change already published.
        self._last_commit = int(resumed) if resumed is not None else None
        self._catalog = connect(dsn)
        self._catalog.autocommit = True
        db = self._catalog.info.dbname
        self.builder = ChangeBuilder(self.kafka.topic_prefix, db)
        self.writer = EnvelopeWriter(self.kafka.topic_prefix, db)
        #: The compiled per-message path, when no option rewrites records (else None).
        self._emitter = (
            None if self._skipped or self.pg.transaction_metadata
            else RecordEmitter(self.writer, self.shapes, self.topics, self._counts,
                               self.kafka.tombstones_on_delete))
        self._txn_topic = f"{self.kafka.topic_prefix}.transaction"
        self._message_topic = f"{self.kafka.topic_prefix}.message"
        self._heartbeat_topic = f"__debezium-heartbeat.{self.kafka.topic_prefix}"
        self._resumed = resumed
        self.backfills.open(db)
        if self._snapshot is None:
            self._start_streaming()
        topics = [self.kafka.raw_topic(t) for t in self.pg.tables]
        topics.append(self._message_topic)
        if self.pg.transaction_metadata:
            topics.append(self._txn_topic)
        if self.pg.heartbeat_interval_s is not None:
            topics.append(self._heartbeat_topic)
        return topics

    def finish(self) -> None:
        """``initial_only`` is done and confirmed in Kafka: drop the slot, which would hold
        WAL for a stream that never comes (unless ``postgres.initial_only_keep_slot``). Its
        stream position is forgotten first, so a later ``snapshot_mode: initial`` capture
        makes a new slot and snapshots again instead of stopping at a missing slot.

        Only after a snapshot this process completed (also when an earlier try of this
        call failed): a slot found with its snapshot long complete may be one a streaming
        capture uses (``initial_only`` set by mistake on a running pipeline)."""
        if not self._snapshot_done_here or self.pg.initial_only_keep_slot:
            return
        self.offsets.forget()
        if self.offsets.flush():
            raise RetriableError("could not remove the stream position from Kafka before "
                                 "dropping the slot")
        try:
            dropped = ReplicationSlot(self.pg).drop_slot()
        except (SourceSetupError, RetriableError) as exc:
            # Still in use (retried: a walsender may be letting go of it), or refused: say
            # what to do, as the slot holds WAL until it is dropped.
            raise type(exc)(
                f"the initial_only snapshot is complete and confirmed in Kafka, but its "
                f"replication slot holds WAL until dropped: {exc}. If no capture streams "
                f"from it, stop what uses it and run SELECT pg_drop_replication_slot("
                f"'{self.pg.slot}'); to keep it, set postgres.initial_only_keep_slot: true"
            ) from exc
        if dropped:
            log.info("dropped replication slot %s: the initial_only snapshot is complete "
                     "(postgres.initial_only_keep_slot: true keeps it)", self.pg.slot)

    def _hand_snapshot_to_backfill(self, progress: dict[str, Any]) -> None:
        """An initial snapshot interrupted part-way (its exported snapshot died with the
        capture): stream at once from its consistent point, and read what it had not read
        (tables not done, each from the key it reached) as an incremental backfill, so WAL
        does not pile up behind the rest of a big snapshot. The backfill is recorded in
        Kafka before the snapshot is marked handed over: a crash in between resumes the
        snapshot again, never neither."""
        done = set(progress.get("done", []))
        after = dict(progress.get("partial") or {})
        if progress.get("table"):
            after[progress["table"]] = progress.get("after")
        rest = tuple(t for t in self.pg.tables if t not in done)
        if rest:
            self.backfills.request_all(rest, after)
        self.snapshot_offsets.save({**progress, "complete": True,
                                    "rest": "incremental backfill"})
        if self.snapshot_offsets.flush():
            raise RetriableError("could not record the hand-over of the snapshot in Kafka")
        log.info("the initial snapshot was interrupted (%d of %d tables done): streaming from "
                 "its consistent point %s, the rest read as an incremental backfill "
                 "(postgres.snapshot_resume: incremental)", len(done), len(self.pg.tables),
                 progress.get("lsn"))

    def _slot_settings(self) -> PostgresSettings:
        """The settings the slot and publication are prepared with: the listed tables, and
        the outbox table (not snapshotted, not a raw topic: its inserts are routed)."""
        if self.outbox is None or self.outbox.table is None:
            return self.pg
        return self.pg.model_copy(update={"tables": (*self.pg.tables, self.outbox.table)})

    def _snapshot_new_slot(self) -> TableSnapshot | ParallelSnapshot:
        """Create the slot exporting its snapshot, and start reading the tables in it.

        A snapshot is recorded as pending in Kafka *before* the slot exists: a crash right
        after creating the slot must not leave a slot whose existing rows were never read
        (the next start would only stream)."""
        self.snapshot_offsets.save({"lsn": None, "complete": False, "done": []})
        if self.snapshot_offsets.flush():
            raise RetriableError("could not record the pending snapshot in Kafka")
        try:
            with self._repl.cursor() as cur:
                cur.execute(sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput "
                                    "EXPORT_SNAPSHOT").format(sql.Identifier(self.pg.slot)))
                _name, consistent, exported, _plugin = cur.fetchone()
        except psycopg2.Error as exc:
            raise translate(exc, "creating the replication slot") from exc
        log.info("created replication slot %s at %s with snapshot %s", self.pg.slot,
                 consistent, exported)
        # The snapshot stays valid until the next command on the replication connection:
        # the reader imports it first, streaming starts only after the snapshot's last row.
        return self._open_snapshot(Lsn.parse(consistent), exported, None)

    def _open_snapshot(self, consistent: Lsn, exported: str | None,
                       progress: dict[str, Any] | None) -> TableSnapshot | ParallelSnapshot:
        """The snapshot reader: in this process, or ``snapshot_readers`` processes."""
        if self.pg.snapshot_readers == 1:
            return TableSnapshot(self.pg, self.kafka, SESSION, consistent, exported, progress,
                                 self.unconverted)
        return ParallelSnapshot(self.pg, self.kafka, SESSION, consistent, exported, progress,
                                self.unconverted, self.schemas_dir)

    def _start_streaming(self) -> None:
        try:
            cur = self._repl.cursor()
            cur.start_replication(
                slot_name=self.pg.slot,
                decode=False,
                options={"proto_version": "1", "publication_names": self.pg.publication,
                         "messages": "true"},
            )
        except psycopg2.Error as exc:
            raise translate(exc, "starting replication from the slot") from exc
        self._cur = cur
        log.info("streaming slot %s (publication %s) from %s", self.pg.slot,
                 self.pg.publication, self._resumed)

    def read(self, max_items: int) -> list[Item]:
        snapshot = self._snapshot
        if snapshot is not None:
            if snapshot.finished:  # its completion was handed out: stream (or stop)
                self._snapshot = None
                if self.pg.snapshot_mode == "initial_only":
                    self._snapshot_done_here = True
                    raise SourceExhausted("snapshot complete (snapshot_mode initial_only)")
                self._start_streaming()
            else:
                return snapshot.read()
        cur = self._cur
        out = self._out = []
        handled = 0
        backfills = self.backfills
        if backfills.window is not None:
            out.extend(backfills.step(BACKFILL_SLICE, int(time.time() * 1000)))
        elif backfills.wants_chunk:
            backfills.read_chunk(self._checkpointed)
        try:
            emitter = self._emitter
            while handled < max_items:
                msg = cur.read_message()
                if msg is None:
                    break
                handled += 1
                if (emitter is not None and self._ctx is not None
                        and backfills.window is None
                        and emitter.take(msg.payload, msg.data_start, out, self._now_ms)):
                    continue
                self._handle(msg.payload, msg.data_start)
            if handled < max_items:  # caught up with the server
                self._idle(cur, out)
            else:
                self._flush_counts()
                self._feedback()
        except psycopg2.Error as exc:
            raise translate(exc, "streaming from the replication slot") from exc
        return out

    def confirm(self, position: Lsn | SnapshotPosition) -> None:
        if isinstance(position, SnapshotPosition):
            self.snapshot_offsets.save(position.progress)
            return
        self._confirmed = position
        self.metrics.set("cdc_capture_confirmed_lsn", int(position))
        self.backfills.confirmed(int(position))
        if time.monotonic() - self._last_feedback >= 0.05:  # at most ~20 a second
            try:
                self._feedback(force=True)
            except psycopg2.Error as exc:
                raise translate(exc, "confirming a position to the slot") from exc
        now = time.monotonic()
        if now - self._last_saved >= SAVE_EVERY_S:
            self._save_position()
            self._last_saved = now

    def keepalive(self) -> None:
        if self._cur is None:
            return  # snapshotting: the replication connection is not streaming yet
        try:
            self._feedback()
        except psycopg2.Error as exc:
            raise translate(exc, "keeping the replication connection alive") from exc

    def close(self) -> None:
        if self._snapshot is not None:
            self._snapshot.close()
        self.snapshot_offsets.flush()
        self.backfills.close()
        self._flush_counts()
        if self._confirmed is not None:
            with contextlib.suppress(psycopg2.Error):
                self._feedback(force=True)
            self._save_position()
        self.offsets.flush()
        for conn in (self._repl, self._catalog):
            if conn is not None:
                with contextlib.suppress(psycopg2.Error):
                    conn.close()
        self._repl = self._catalog = self._cur = None

    # -- positions and liveness ----------------------------------------------------------
    def _idle(self, cur: Any, out: list[Item]) -> None:
        """Nothing more to read right now: move on to the server's position when between
        transactions (keeps WAL from piling up while other tables change), report, wait."""
        if self._ctx is None and cur.wal_end and cur.wal_end > self._checkpointed:
            self._checkpointed = cur.wal_end
            out.append(Checkpoint(Lsn(cur.wal_end)))
        self._flush_counts()
        self._heartbeat(out)
        self._measure_slot()
        self._feedback()
        if not out:
            select.select([cur], [], [], 0.02)

    def _feedback(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_feedback < self.pg.status_interval_s:
            return
        confirmed = self._confirmed
        if confirmed is not None:
            lsn = int(confirmed)
            # force: without it psycopg2 only stores the values until its own next status
            # message, which it sends only while we read (not while Kafka holds us up)
            self._cur.send_feedback(write_lsn=lsn, flush_lsn=lsn, apply_lsn=lsn, force=True)
        else:
            self._cur.send_feedback(force=True)
        self._last_feedback = now
        busy = self._ctx is not None or (confirmed is not None and
                                         int(confirmed) < self._checkpointed)
        lag = max(0.0, time.time() - self._last_commit_ts_us / 1e6) if busy else 0.0
        self.metrics.set("cdc_replication_lag_seconds", lag)

    def _save_position(self) -> None:
        if self._confirmed is None:
            return
        last = self._last_commit
        self.offsets.save({"lsn": str(self._confirmed),
                           "last_commit_lsn": None if last is None else str(Lsn(last))})

    def _measure_slot(self) -> None:
        """How much WAL the slot keeps on disk (a metric), every ``SLOT_MEASURE_S``."""
        now = time.monotonic()
        if now < self._next_measure:
            return
        self._next_measure = now + SLOT_MEASURE_S
        with self._catalog.cursor() as cur:
            cur.execute(RETAINED_WAL_SQL, (self.pg.slot,))
            row = cur.fetchone()
        if row is not None:
            self.metrics.set("cdc_capture_slot_retained_wal_bytes", int(row[3] or 0))
            self.metrics.set("cdc_capture_slot_lag_bytes", int(row[2] or 0))

    def _heartbeat(self, out: list[Item]) -> None:
        every = self.pg.heartbeat_interval_s
        if every is None:
            return
        now = time.monotonic()
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + every
        query = self.pg.heartbeat_action_query
        if query:
            try:
                with self._catalog.cursor() as cur:
                    cur.execute(query)
            except psycopg2.Error as exc:
                error = translate(exc, "running postgres.heartbeat_action_query")
                if isinstance(error, RetriableError):  # the server went away meanwhile
                    raise error from exc
                raise SourceSetupError(
                    f"postgres.heartbeat_action_query failed: {exc}".strip()) from exc
        key = orjson.dumps({"serverName": self.kafka.topic_prefix})
        value = orjson.dumps({"ts_ms": int(time.time() * 1000)})
        out.append((self._heartbeat_topic, key, value, ANY_PARTITION))
        self.metrics.inc("cdc_capture_heartbeats_total")

    # -- messages ------------------------------------------------------------------------
    def _handle(self, payload: bytes, lsn: int) -> None:
        oid = insert_relation_oid(payload)
        if oid is not None and self._ctx is not None:
            shape = self.shapes.get(oid)
            if shape is not None:
                try:
                    row = insert_row(payload, shape.names, shape.converters, UNAVAILABLE_VALUE)
                except PgoutputDecodeError:
                    pass  # anything unusual: the full decoder below says what
                else:
                    if shape.policy is not None:
                        row = shape.policy.apply(row)
                    self._created(row, shape, lsn)
                    return
            elif oid in self.ignored:
                return
        msg = decode_message(payload)
        kind = type(msg)
        if kind is Insert or kind is Update or kind is Delete:
            replaced = take_replaced_values()
            if replaced:
                self._not_utf8(msg, replaced)  # type: ignore[arg-type]
            self._change(msg, lsn)  # type: ignore[arg-type]
        elif kind is Begin:
            self._begin(msg)  # type: ignore[arg-type]
        elif kind is Commit:
            self._commit(msg)  # type: ignore[arg-type]
        elif kind is Relation:
            self._relation(msg)  # type: ignore[arg-type]
        elif kind is Truncate:
            self._truncate(msg, lsn)  # type: ignore[arg-type]
        elif kind is Message:
            self._message(msg, lsn)  # type: ignore[arg-type]
        # Type and Origin carry nothing a raw topic needs.

    def _not_utf8(self, msg: Insert | Update | Delete, count: int) -> None:
        """Report values whose bytes were not UTF-8 (replaced by U+FFFD while decoding)."""
        shape = self.shapes.get(msg.relation_oid)
        if shape is None:
            self.unconverted.replaced(f"relation {msg.relation_oid}", [], count)
            return
        columns: set[str] = set()
        for values in (getattr(msg, "new", None), getattr(msg, "old", None)):
            for name, value in zip(shape.names, values or (), strict=False):
                if isinstance(value, str) and "\ufffd" in value:
                    columns.add(name)
        self.unconverted.replaced(shape.table_id, sorted(columns), count)

    def _begin(self, msg: Begin) -> None:
        self._ctx = TransactionContext(msg.xid, msg.commit_ts_us, self._last_commit)
        self._commit_at = int(msg.final_lsn)
        self.writer.begin(self._ctx)
        self._last_commit_ts_us = msg.commit_ts_us
        if self.pg.transaction_metadata:
            self._txn_meta = TransactionMetadata(
                f"{msg.xid}:{int(msg.final_lsn)}", msg.commit_ts_us)
            self._txn_meta.begin(self._out, self._txn_topic)

    def _commit(self, msg: Commit) -> None:
        assert self._ctx is not None, "Commit without Begin"
        if self._txn_meta is not None:
            self._txn_meta.end(self._out, self._txn_topic)
            self._txn_meta = None
        end = int(msg.end_lsn)
        self._out.append(Checkpoint(msg.end_lsn, msg.commit_ts_us))
        self._checkpointed = max(self._checkpointed, end)
        self._last_commit = end  # the next transaction's sequence[0], as Debezium's
        self._ctx = None
        self.metrics.inc("cdc_capture_transactions_total")

    def _relation(self, msg: Relation) -> None:
        table_id = f"{msg.namespace or 'pg_catalog'}.{msg.name}"
        if table_id == self.pg.signal_table:
            self._signal_oid = msg.oid
            self._signal_columns = [c.name for c in msg.columns]
            return
        if self.outbox is not None and self.outbox.owns(table_id):
            self._outbox_relation(msg)
            return
        if table_id not in self.listed:
            root = self._listed_root(msg.oid)
            if root is None:
                self.ignored.add(msg.oid)
                self.shapes.pop(msg.oid, None)
                log.info("not capturing %s: it is in publication %s but not in "
                         "postgres.tables", table_id, self.pg.publication)
                return
            log.info("capturing partition %s as its listed root %s", table_id, root)
            schema, name = root.split(".", 1)
        else:
            schema, name = msg.namespace or "pg_catalog", msg.name
        self.ignored.discard(msg.oid)
        with self._catalog.cursor() as cur:
            pk = primary_key_columns(cur, msg.oid)
            types = [self.types.resolve(cur, c.type_oid) for c in msg.columns]
        shape = TableShape.from_relation(
            msg, pk, types, self.pg.decimal_handling_mode, self.unconverted,
            schema=schema, table=name, columns=self.pg.columns.get(f"{schema}.{name}"))
        self.shapes[msg.oid] = shape
        self.topics[msg.oid] = self.kafka.raw_topic(shape.table_id)
        log.info("table %s: columns %s", shape.table_id, [c.name for c in msg.columns])

    def _outbox_relation(self, msg: Relation) -> None:
        """The outbox table: decoded like any table, but kept apart from ``shapes`` so the
        hot path of the other tables does not look at it."""
        with self._catalog.cursor() as cur:
            pk = primary_key_columns(cur, msg.oid)
            types = [self.types.resolve(cur, c.type_oid) for c in msg.columns]
        self._outbox_shapes[msg.oid] = TableShape.from_relation(
            msg, pk, types, self.pg.decimal_handling_mode, self.unconverted)
        self.shapes.pop(msg.oid, None)
        self.ignored.discard(msg.oid)
        log.info("routing the inserts of %s.%s as outbox events", msg.namespace, msg.name)

    def _listed_root(self, oid: int) -> str | None:
        """The listed partitioned table ``oid`` is a partition of, if any."""
        with self._catalog.cursor() as cur:
            cur.execute(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.oid = pg_partition_root(%s::oid)", (oid,))
            row = cur.fetchone()
        return row[0] if row is not None and row[0] in self.listed else None

    def _shape(self, oid: int) -> TableShape | None:
        shape = self.shapes.get(oid)
        if shape is None and oid not in self.ignored:
            raise RetriableError(f"change for relation {oid} arrived before its Relation message")
        return shape

    def _change(self, msg: Insert | Update | Delete, lsn: int) -> None:
        shape = self.shapes.get(msg.relation_oid)
        if shape is None:
            if msg.relation_oid == self._signal_oid:
                if type(msg) is Insert:
                    self._signal_row(msg, lsn)
                return
            outbox = self._outbox_shapes.get(msg.relation_oid)
            if outbox is not None:
                assert self.outbox is not None
                row = outbox.row(msg.new) if type(msg) is Insert else None  # type: ignore[union-attr]
                self.outbox.change(msg, row, lsn, self._out)
                return
            shape = self._shape(msg.relation_oid)
            if shape is None:
                return
        if type(msg) is Insert:
            self._created(shape.row(msg.new), shape, lsn)
            return
        window = self.backfills.window
        emitter = self._emitter
        if emitter is not None and (window is None or window.table != shape.table_id):
            emitter.change(msg, shape, lsn, self._out, self._now_ms)
            return
        topic = self.topics[msg.relation_oid]
        out = self._out
        counts = self._counts
        meta = self._txn_meta
        skipped = self._skipped
        for op, key, value in self.writer.encode(msg, shape, lsn, self._now_ms):
            if skipped and op in skipped:
                counts[(shape.oid, "skipped:" + op)] = counts.get((shape.oid, "skipped:" + op),
                                                                  0) + 1
                continue
            if window is not None and window.table == shape.table_id:
                value = self.backfills.changed(key, op, value)  # type: ignore[assignment]
            if meta is not None:
                value = meta.stamp(value, shape.table_id)
            out.append((topic, key, value, ANY_PARTITION))
            if op == "d" and self.kafka.tombstones_on_delete:
                out.append((topic, key, None, ANY_PARTITION))
            counted = (shape.oid, op)
            counts[counted] = counts.get(counted, 0) + 1

    def _created(self, after: dict[str, Any], shape: TableShape, lsn: int) -> None:
        if self._skipped and "c" in self._skipped:
            counted = (shape.oid, "skipped:c")
            self._counts[counted] = self._counts.get(counted, 0) + 1
            return
        key, value = self.writer.created(after, shape, lsn, self._now_ms)
        window = self.backfills.window
        if window is not None and window.table == shape.table_id:
            self.backfills.changed(key, "c", value)
        if self._txn_meta is not None:
            value = self._txn_meta.stamp(value, shape.table_id)
        self._out.append((self.topics[shape.oid], key, value, ANY_PARTITION))
        counted = (shape.oid, "c")
        self._counts[counted] = self._counts.get(counted, 0) + 1

    def _truncate(self, msg: Truncate, lsn: int) -> None:
        """One copy per partition: every worker sees the truncate in order with its own
        partition's rows, so no row written before it survives on any partition."""
        assert self._ctx is not None
        for oid in msg.relation_oids:
            if oid in self._outbox_shapes:
                continue  # not an event (as a DELETE of the outbox table is not)
            shape = self._shape(oid)
            if shape is None:
                continue
            if "t" in self._skipped:
                self.metrics.inc("cdc_capture_skipped_events_total", table=shape.table_id,
                                 op="t")
                continue
            self.backfills.truncated(shape.table_id)
            event = self.builder.truncate(shape, self._ctx, lsn, int(time.time() * 1000))
            value = encode_value(event)
            if self._txn_meta is not None:
                value = self._txn_meta.stamp(value, shape.table_id)
            self._out.append((self.topics[oid], None, value, EVERY_PARTITION))
            self.metrics.inc("cdc_capture_events_total", table=shape.table_id, op="t")

    def _message(self, msg: Message, lsn: int) -> None:
        """A pg_logical_emit_message payload, published as Debezium does (``op: m``); our
        own (signals, backfill watermarks) are acted on instead, and one with the outbox
        prefix is routed as an outbox event."""
        if msg.prefix in INTERNAL_PREFIXES:
            self._internal_message(msg, lsn)
            return
        if self.outbox is not None and msg.prefix == self.outbox.prefix:
            self.outbox.message(msg, lsn, self._out)
            return
        if (self._include and not any(p.search(msg.prefix) for p in self._include)) or \
                any(p.search(msg.prefix) for p in self._exclude):
            self.metrics.inc("cdc_capture_logical_messages_total", outcome="filtered")
            return
        ctx = self._ctx if msg.transactional else None
        key, value = self.builder.message(msg, ctx, lsn, self._last_commit,
                                          int(time.time() * 1000))
        self._out.append((self._message_topic, key, value, ANY_PARTITION))
        self.metrics.inc("cdc_capture_logical_messages_total", outcome="published")

    def _internal_message(self, msg: Message, lsn: int) -> None:
        if msg.prefix == WATERMARK_PREFIX:
            chunk_end = self.backfills.watermark(msg.content, lsn)
            if chunk_end and self._ctx is None and lsn > self._checkpointed:
                self._checkpointed = lsn
                self._out.append(Checkpoint(Lsn(lsn)))
        elif msg.prefix == SIGNAL_PREFIX:
            try:
                signal = from_message(msg.content)
            except SignalError as exc:
                log.error("signal message at %s ignored: %s", Lsn(lsn), exc)
                self.metrics.inc("cdc_capture_signals_total", type="?", outcome="refused")
                return
            self.backfills.signal(signal, self._stream_position(lsn, msg.transactional),
                                  self.listed)

    def _stream_position(self, lsn: int, transactional: bool = True) -> int:
        """Where a change read now stands in the order positions are confirmed in: past
        everything before its transaction's commit (the confirmed positions are commits'
        ends, and whatever was read before this transaction lies below its commit record),
        not its own LSN, which a transaction open for long leaves below records read before
        it. A state saved at its own LSN would be saved once an earlier transaction is
        confirmed, with rows read before it (a backfill chunk) still unacknowledged."""
        if transactional and self._ctx is not None:
            return max(lsn, self._commit_at + 1)
        return lsn

    def _signal_row(self, msg: Insert, lsn: int) -> None:
        """A row inserted into ``postgres.signal_table`` (Debezium's id, type, data)."""
        row = dict(zip(self._signal_columns, msg.new, strict=False))
        values = {k: v.decode() if isinstance(v, bytes) else v for k, v in row.items()}
        try:
            signal = parse_signal(str(values.get("type")), values.get("data"),
                                  str(values.get("id") or ""))
        except SignalError as exc:
            log.error("signal row %s in %s ignored: %s", values.get("id"),
                      self.pg.signal_table, exc)
            self.metrics.inc("cdc_capture_signals_total", type=str(values.get("type")),
                             outcome="refused")
            return
        self.backfills.signal(signal, self._stream_position(lsn), self.listed)

    def _flush_counts(self) -> None:
        """Per-event counts are kept in a plain dict on the hot path, moved to metrics here."""
        for (oid, op), n in self._counts.items():
            shape = self.shapes.get(oid)
            if shape is None:
                continue
            if op.startswith("skipped:"):
                self.metrics.inc("cdc_capture_skipped_events_total", n, table=shape.table_id,
                                 op=op.removeprefix("skipped:"))
            else:
                self.metrics.inc("cdc_capture_events_total", n, table=shape.table_id, op=op)
        self._counts.clear()
        for type_name, n in self.unconverted.drain().items():
            self.metrics.inc("cdc_capture_unconverted_values_total", n, type=type_name)
        self._now_ms = str(int(time.time() * 1000)).encode()
