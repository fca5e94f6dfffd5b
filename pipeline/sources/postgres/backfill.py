"""Incremental backfills: a table's existing rows read in chunks while the stream goes on.

Netflix DBLog's watermark algorithm, as Debezium's incremental snapshots use it. For each
chunk, between two reads of the replication stream:

1. a *low watermark* is written to the WAL (``pg_logical_emit_message``, nothing is written to
   any table), the chunk is read (keyset order, a read-only transaction of its own), and a
   *high watermark* follows it;
2. the stream goes on; every change of the chunk's table that arrives before the high
   watermark removes its key from the chunk: the log's version is at least as new as the row
   read (the window opens when the chunk is read, at the stream position capture has reached,
   which is at or before the low watermark: wider than DBLog's window, never narrower, so a
   transaction that wrote its commit record before the low watermark but was not yet visible
   to the chunk's read is still seen);
3. at the high watermark, the chunk's remaining rows are published as ``op: r`` events
   (``source.snapshot: incremental``), in order with the stream.

Every row is therefore either the version the chunk read, published before any later change
of it, or dropped in favour of a change the log carries. Snapshot reads rank below every
streamed change in the sinks (``ChangePosition``), so a chunk row never overwrites a change.

An update whose large (TOAST) values were unchanged arrives without them. Inside the window,
its missing values are filled from the newest version capture holds (an earlier change in the
window, else the chunk's read row, which has the same unchanged value): the chunk row it
replaces would otherwise have been the only carrier of those values.

Progress (table, the last key read, rows) is saved in Kafka (the offsets topic) once
everything published before it was acknowledged: a restarted capture resumes from the last
finished chunk. A backfill never stops capture: a table it cannot read (dropped, a filter
PostgreSQL refuses) is marked failed, with the error, in ``cdc snapshot status``.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg2
from psycopg2 import sql

from pipeline.capture.backfill_window import APPLIED_KEPT, BackfillBook, TableBackfill
from pipeline.capture.offsets import OffsetStore
from pipeline.capture.source import ANY_PARTITION, Item
from pipeline.config import KafkaSettings, PostgresSettings
from pipeline.errors import RetriableError, SourceSetupError
from pipeline.events import (
    UNAVAILABLE_BINARY,
    UNAVAILABLE_VALUE,
    Row,
    is_unavailable,
)
from pipeline.metrics import Metrics
from pipeline.sources.postgres.chunks import ChunkKey, TableReader
from pipeline.sources.postgres.envelope import TableShape
from pipeline.sources.postgres.reads import ReadEncoder
from pipeline.sources.postgres.signals import WATERMARK_PREFIX
from pipeline.sources.postgres.slot import connect, translate
from pipeline.sources.postgres.types import TypeResolver
from pipeline.sources.postgres.unconverted import UnconvertedValues

log = logging.getLogger(__name__)

__all__ = ["APPLIED_KEPT", "Backfills", "TableBackfill", "state_store"]

_PLACEHOLDERS = (UNAVAILABLE_VALUE.encode(), UNAVAILABLE_BINARY.encode())


def state_store(kafka: KafkaSettings, slot: str) -> OffsetStore:
    """Where a slot's backfills are kept (read by ``cdc snapshot status`` too)."""
    return OffsetStore(kafka, {"source": "postgres-backfill", "slot": slot})


#: Below this many rows expected, a backfill's progress counts the rows exactly.
EXACT_COUNT_BELOW = 100_000


@dataclass
class _Window:
    """One chunk from its read to its end: ``reading`` until the stream reaches its high
    watermark, ``emitting`` its rows a slice per read of the stream, then ``ending`` until the
    stream reaches its end mark (where its progress is saved)."""

    mark: str
    table: str
    shape: TableShape
    raw: list[tuple[str | None, ...]]  # the rows as read (PostgreSQL's text)
    last_key: ChunkKey | None
    phase: str = "reading"
    lsn: int = 0  # the high watermark's position
    converted: int = 0  # raw rows converted into ``rows``/``order``
    emitted: int = 0  # raw rows published or dropped
    published: int = 0
    rows: dict[bytes, Row] = field(default_factory=dict)
    order: list[bytes] = field(default_factory=list)
    #: Keys of the table the stream changed since the chunk was read: not published.
    changed: set[bytes] = field(default_factory=set)
    #: The newest value the window saw per changed key (None: deleted), to fill a later
    #: update's unchanged TOAST values.
    latest: dict[bytes, bytes | None] = field(default_factory=dict)
    truncated: bool = False

    def convert(self, upto: int) -> None:
        row_of, key_json = self.shape.row, self.shape.key_json
        for values in self.raw[self.converted:upto]:
            after = row_of(tuple(values))
            key = key_json(after)
            self.rows[key] = after
            self.order.append(key)
        self.converted = max(self.converted, upto)


class Backfills(BackfillBook):
    """The backfills of one slot: requested by signals, read chunk by chunk, saved in Kafka."""

    listed_setting = "postgres.tables"

    def __init__(self, pg: PostgresSettings, kafka: KafkaSettings, metrics: Metrics,
                 session: str, unconverted: UnconvertedValues) -> None:
        super().__init__(state_store(kafka, pg.slot), metrics, pg.snapshot_chunk_size)
        self.pg = pg
        self.kafka = kafka
        self.session = session
        self.unconverted = unconverted
        self.window: _Window | None = None
        self._conn: Any = None
        self._readers: dict[str, TableReader] = {}
        self._types = TypeResolver()
        self.db = ""
        self._encoder = ReadEncoder(kafka.topic_prefix, "")

    # -- lifecycle -----------------------------------------------------------------------
    def open(self, db: str) -> None:
        """Load the saved state (after a restart: resume from the last finished chunk)."""
        self.db = db
        self._encoder = ReadEncoder(self.kafka.topic_prefix, db)
        self.load()

    def close(self) -> None:
        self.store.flush()
        self._readers.clear()
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
        self._conn = None
        self.window = None

    def request_all(self, tables: tuple[str, ...],
                    after: dict[str, list[str | None] | None] | None = None) -> None:
        """Backfill ``tables`` while streaming, each from the start or from its key in
        ``after`` (a new slot with ``snapshot_mode: incremental``; the rest of an interrupted
        initial snapshot), saved in Kafka before returning."""
        saved = self.store.load() or {}
        after = after or {}
        self.tables = [TableBackfill(t, self.chunk_size, after=after.get(t)) for t in tables]
        for entry in self.tables:
            entry.estimate = self._estimate(entry)
        self.paused = False
        self.applied = list(saved.get("applied", []))
        self.store.save(self.state())
        if self.store.flush():
            raise RetriableError("could not record the backfill of the new slot in Kafka")
        log.info("backfilling %s while streaming", ", ".join(tables))

    def _estimate(self, entry: TableBackfill) -> int | None:
        """The planner's row estimate, or the exact count where the planner expects few rows
        (it assumes ten pages, ~880 rows, of a table never analyzed: a 5-row table showed
        "~880 rows"), given at most a second so a big table with stale statistics costs no
        more (no count(*) of a big table)."""
        schema, name = entry.table.split(".", 1)
        rows = sql.SQL("SELECT 1 FROM {}").format(sql.Identifier(schema, name))
        if entry.where:
            rows += sql.SQL(" WHERE ({})").format(sql.SQL(entry.where))
        try:
            with self._connection().cursor() as cur:
                cur.execute("BEGIN READ ONLY")
                try:
                    cur.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + rows)
                    estimate = int(cur.fetchone()[0][0]["Plan"]["Plan Rows"])
                    if estimate <= EXACT_COUNT_BELOW:
                        cur.execute("SAVEPOINT exact")
                        try:
                            cur.execute("SET LOCAL statement_timeout = 1000")
                            cur.execute(sql.SQL("SELECT count(*) FROM (") + rows
                                        + sql.SQL(") AS r"))
                            estimate = int(cur.fetchone()[0])
                        except psycopg2.errors.QueryCanceled:
                            cur.execute("ROLLBACK TO SAVEPOINT exact")  # the estimate, then
                finally:
                    cur.execute("ROLLBACK")
        except psycopg2.Error as exc:
            self._fail(entry, exc)
            return None
        return estimate

    # -- chunks --------------------------------------------------------------------------
    def read_chunk(self, now_lsn: int) -> None:
        """Write the low watermark, read the next chunk, write the high watermark: the
        window is open until the stream reaches the high one."""
        entry = next(t for t in self.tables if not t.finished)
        mark = uuid.uuid4().hex
        try:
            reader = self._reader(entry)
            self._emit(f"{mark}:low")
            with self._conn.cursor() as cur:
                cur.execute("BEGIN READ ONLY")
            try:
                rows = reader.chunk(entry.after, entry.chunk_size)
            finally:
                with self._conn.cursor() as cur:
                    cur.execute("COMMIT")
            self._emit(f"{mark}:high")
        except psycopg2.Error as exc:
            error = translate(exc, f"reading a chunk of {entry.table}")
            if isinstance(error, RetriableError):
                raise error from exc
            self._fail(entry, exc)
            self._remember(now_lsn, durable=True)
            return
        except SourceSetupError as exc:  # e.g. no primary key
            self._fail(entry, exc)
            self._remember(now_lsn, durable=True)
            return
        last = reader.key_of(rows[-1]) if rows else entry.after
        self.window = _Window(mark, entry.table, reader.shape, rows, last)

    def watermark(self, content: bytes, lsn: int) -> bool:
        """A watermark arrived in the stream. At its chunk's high one the chunk's rows start
        to be published (:meth:`step`); at its end mark the chunk's progress is taken (True:
        checkpoint there)."""
        window = self.window
        mark, _, which = content.decode(errors="replace").partition(":")
        if window is None or mark != window.mark:
            return False  # a chunk abandoned by a restart or a stop
        if which == "high" and window.phase == "reading":
            window.phase, window.lsn = "emitting", lsn
        elif which == "end" and window.phase == "ending":
            self.window = None
            self._remember(lsn, durable=False)
            return True
        return False

    def step(self, limit: int, now_ms: int) -> list[Item]:
        """Publish up to ``limit`` of the chunk's rows, in key order, after its high
        watermark (a slice per read keeps the stream's latency low); a row whose key the
        stream changed meanwhile is left to the stream."""
        window = self.window
        if window is None or window.phase != "emitting":
            return []
        out: list[Item] = []
        total = len(window.raw)
        if window.converted < total:
            window.convert(min(total, window.emitted + limit))
        topic = self.kafka.raw_topic(window.table)
        value, dumps, shape = self._encoder.value, orjson.dumps, window.shape
        ts_us = now_ms * 1000
        while window.emitted < window.converted and len(out) < limit:
            key = window.order[window.emitted]
            window.emitted += 1
            if key in window.changed or window.truncated:
                continue
            row = dumps(window.rows[key])
            out.append((topic, key, value(shape, row, "incremental", window.lsn, ts_us,
                                          now_ms), ANY_PARTITION))
        window.published += len(out)
        if window.emitted == total:
            self._chunk_done(window)
        return out

    def _chunk_done(self, window: _Window) -> None:
        window.phase = "ending"
        self.chunk_done(window.table, window.published, len(window.raw), window.last_key)
        try:
            # Its progress is saved where the stream reaches this mark: after every row
            # published above.
            self._emit(f"{window.mark}:end")
        except psycopg2.Error as exc:
            raise translate(exc, "writing a backfill watermark") from exc

    # -- the stream inside a window --------------------------------------------------------
    def changed(self, key: bytes | None, op: str, value: bytes | None) -> bytes | None:
        """A change of the window's table: its key is no longer published from the chunk;
        returns the value, its unchanged TOAST values filled in from the newest version
        held."""
        window = self.window
        if window is None or key is None:
            return value
        window.changed.add(key)
        if value is None:
            return value  # a tombstone
        if any(p in value for p in _PLACEHOLDERS):
            if key not in window.rows and window.converted < len(window.raw):
                window.convert(len(window.raw))
            value = self._fill(window, key, value)
        window.latest[key] = None if op == "d" else value
        return value

    def truncated(self, table: str) -> None:
        window = self.window
        if window is not None and window.table == table:
            window.truncated = True
            window.latest = {}
            window.rows = {}

    def _fill(self, window: _Window, key: bytes, value: bytes) -> bytes:
        if key in window.latest:
            newest = window.latest[key]
            base = None if newest is None else orjson.loads(newest).get("after")
        else:
            base = window.rows.get(key)
        if not base:
            return value
        envelope = orjson.loads(value)
        after = envelope.get("after")
        if not isinstance(after, dict):
            return value
        filled = False
        for column, current in after.items():
            if is_unavailable(current) and column in base and not is_unavailable(base[column]):
                after[column] = base[column]
                filled = True
        if filled:
            self.metrics.inc("cdc_capture_backfill_toast_filled_total", table=window.table)
            return orjson.dumps(envelope)
        return value

    def _forget_reader(self, table: str) -> None:
        self._readers.pop(table, None)

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = connect(self.pg.dsn.get_secret_value(), text_as_stored=True,
                                 options=self.session)
            self._conn.autocommit = True
        return self._conn

    def _reader(self, entry: TableBackfill) -> TableReader:
        reader = self._readers.get(entry.table)
        if reader is None:
            reader = TableReader(self._connection(), entry.table, self.pg, self._types,
                                 self.unconverted, entry.where)
            self._readers[entry.table] = reader
        return reader

    def _emit(self, content: str) -> None:
        with self._connection().cursor() as cur:
            cur.execute("SELECT pg_logical_emit_message(false, %s, %s)",
                        (WATERMARK_PREFIX, content))


