"""The initial snapshot: every row that exists when capture starts, as ``op: r`` events.

When capture creates its slot, it asks for an *exported snapshot*
(``CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT``): a view of the database exactly at the
slot's consistent point. The tables are read inside it, in primary-key chunks (keyset
pagination, never OFFSET; nothing holds a table in memory), and only then does streaming start,
at that same point: no change is lost and none is applied twice at the seam.

Progress (tables done, the key reached) is confirmed like any position: only after Kafka
acknowledged the chunk, and kept in Kafka (the offsets topic), so a capture moved to another
host resumes. An exported snapshot does not survive a crash, so a snapshot that died part-way
reads its remaining chunks outside it. That is still exact, because streaming has not started:
the slot still holds every change since the consistent point, and streams them after the
snapshot's last record on the same partitions. A row read later than the consistent point is
overwritten by the changes that made it so; a row deleted meanwhile is never read.

Snapshot events rank below every streamed change of their row (``ChangePosition``), so a
transaction that was open across the consistent point, whose changes carry lower LSNs but
commit after it, still wins over the snapshot's older image.

WAL is retained by the slot from the consistent point while the snapshot runs: about the
snapshot's duration times the write rate. Snapshot big tables with ``snapshot_chunk_size``
large enough (reads are bounded by Kafka's speed, not by the chunk size) and watch
``cdc_capture_slot_retained_wal_bytes``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg2

from pipeline.capture.source import ANY_PARTITION, Checkpoint, Item
from pipeline.config import KafkaSettings, PostgresSettings
from pipeline.events import snapshot_marker
from pipeline.positions import Lsn, SnapshotPosition
from pipeline.sources.postgres.chunks import TableReader
from pipeline.sources.postgres.envelope import TableShape
from pipeline.sources.postgres.reads import ReadEncoder
from pipeline.sources.postgres.slot import connect, translate
from pipeline.sources.postgres.types import TypeResolver
from pipeline.sources.postgres.unconverted import UnconvertedValues

log = logging.getLogger(__name__)

def open_snapshot_transaction(conn: Any, exported: str | None) -> str:
    """Start the read-only transaction a snapshot reads in, inside ``exported`` (the slot's
    exported snapshot) when given; returns the database's name."""
    try:
        with conn.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if exported is not None:
                cur.execute("SET TRANSACTION SNAPSHOT %s", (exported,))
            cur.execute("SELECT current_database()")
            (db,) = cur.fetchone()
    except psycopg2.Error as exc:
        raise translate(exc, "starting the snapshot") from exc
    return str(db)


@dataclass(slots=True)
class _Held:
    """The last row read, held back until the next one tells its ``snapshot`` marker."""

    topic: str
    shape: TableShape
    key: bytes
    row: bytes  # the row's JSON
    first_overall: bool
    first_in_table: bool
    last_in_table: bool = False
    table: str = ""
    #: The key of the row before it in its table (None: it is the table's first row):
    #: where a resumed snapshot reads from while this row is not yet published.
    before: list[str | None] | None = None


class TableSnapshot:
    """Reads the listed tables chunk by chunk; one chunk per ``read``."""

    def __init__(self, pg: PostgresSettings, kafka: KafkaSettings, session: str,
                 consistent: Lsn, exported: str | None, progress: dict[str, Any] | None,
                 unconverted: UnconvertedValues) -> None:
        self.pg = pg
        self.kafka = kafka
        self.consistent = consistent
        self.unconverted = unconverted
        progress = progress or {}
        self.done: list[str] = list(progress.get("done", []))
        self.table: str | None = progress.get("table")
        self.after: list[str | None] | None = progress.get("after")
        #: Tables a parallel snapshot had read part of: where each resumes.
        self._partial: dict[str, list[str | None]] = dict(progress.get("partial") or {})
        self.chunks = int(progress.get("chunks", 0))
        self.rows = int(progress.get("rows", 0))
        self.ts_us = int(progress.get("ts_us") or time.time() * 1_000_000)
        self._held: _Held | None = None
        self._first = not self.done and self.table is None and not self._partial
        self._reader: TableReader | None = None
        self._now_ms = int(time.time() * 1000)
        self._types = TypeResolver()
        self.conn = connect(pg.dsn.get_secret_value(), options=session)
        self.db = open_snapshot_transaction(self.conn, exported)
        self._encoder = ReadEncoder(kafka.topic_prefix, self.db)
        where = "inside the exported snapshot" if exported else "resuming after a restart"
        log.info("snapshot of %s at %s (%s; %d tables done)", ", ".join(pg.tables),
                 consistent, where, len(self.done))

    @property
    def finished(self) -> bool:
        return self._next_table() is None and self._held is None

    def read(self) -> list[Item]:
        """The next chunk's records and a checkpoint after them (the last call also releases
        the held last row and marks the snapshot complete)."""
        out: list[Item] = []
        table = self._next_table()
        if table is None:
            if self._held is not None:
                self._emit(out, last=True)
            out.append(Checkpoint(SnapshotPosition(self.chunks + 1, self._progress(True))))
            self.close()
            log.info("snapshot complete: %d rows", self.rows)
            return out
        try:
            if self._reader is None:
                self._reader = TableReader(self.conn, table, self.pg, self._types,
                                           self.unconverted)
            reader = self._reader
            rows = reader.chunk(self.after, self.pg.snapshot_chunk_size)
        except psycopg2.Error as exc:
            raise translate(exc, f"reading {table} for the snapshot") from exc
        shape = reader.shape
        topic = self.kafka.raw_topic(table)
        self._now_ms = int(time.time() * 1000)
        row_of, key_json, dumps = shape.row, shape.key_json, orjson.dumps
        starting = self.after is None
        for i, values in enumerate(rows):
            if self._held is not None:
                self._emit(out)
            after = row_of(tuple(values))
            self._held = _Held(topic, shape, key_json(after), dumps(after), self._first,
                               starting and i == 0)
            self._first = False
        self.rows += len(rows)
        if self._held is not None and rows:
            self._held.table = table
            self._held.before = reader.key_of(rows[-2]) if len(rows) > 1 else self.after
        if len(rows) < self.pg.snapshot_chunk_size:
            if self._held is not None and self._held.topic == topic:
                self._held.last_in_table = True
            self.done.append(table)
            self.table, self.after, self._reader = None, None, None
        else:
            self.table = table
            self.after = reader.key_of(rows[-1])
        self.chunks += 1
        out.append(Checkpoint(SnapshotPosition(self.chunks, self._progress(False))))
        return out

    def close(self) -> None:
        with contextlib.suppress(psycopg2.Error):
            self.conn.close()

    def _next_table(self) -> str | None:
        if self.table is None:
            self.table = next((t for t in self.pg.tables if t not in self.done), None)
            if self.table is not None:
                self.after = self._partial.pop(self.table, None)
        return self.table

    def _progress(self, complete: bool) -> dict[str, Any]:
        """What is published so far. The held row is not: its table is not done yet and
        resumes before it (saving the chunk's own end would lose that row in a crash)."""
        done, table, after = self.done, self.table, self.after
        held = self._held
        if held is not None and not complete:
            done = [t for t in self.done if t != held.table]
            table, after = held.table, held.before
        return {"lsn": str(self.consistent), "complete": complete, "done": done,
                "table": table, "after": after, "partial": self._partial,
                "chunks": self.chunks, "rows": self.rows, "ts_us": self.ts_us}

    def _emit(self, out: list[Item], last: bool = False) -> None:
        held = self._held
        assert held is not None
        marker = snapshot_marker(held.first_overall, last, held.first_in_table,
                                 held.last_in_table)
        value = self._encoder.value(held.shape, held.row, marker, int(self.consistent),
                                    self.ts_us, self._now_ms)
        out.append((held.topic, held.key, value, ANY_PARTITION))
        self._held = None

