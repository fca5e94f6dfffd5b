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
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import psycopg2

from pipeline.capture.chunked_snapshot import Chunk, ChunkedSnapshot
from pipeline.capture.source import ANY_PARTITION, Item
from pipeline.config import KafkaSettings, PostgresSettings
from pipeline.positions import Lsn
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


class TableSnapshot(ChunkedSnapshot):
    """Reads the listed tables chunk by chunk in this process; one chunk per ``read``."""

    def __init__(self, pg: PostgresSettings, kafka: KafkaSettings, session: str,
                 consistent: Lsn, exported: str | None, progress: dict[str, Any] | None,
                 unconverted: UnconvertedValues) -> None:
        super().__init__(pg.tables, pg.snapshot_chunk_size, progress)
        self.pg = pg
        self.kafka = kafka
        self.consistent = consistent
        self.unconverted = unconverted
        self.ts_us = int((progress or {}).get("ts_us") or time.time() * 1_000_000)
        self._reader: TableReader | None = None
        self._shape: TableShape | None = None  # the chunk being read's table and topic
        self._topic = ""
        self._now_ms = int(time.time() * 1000)
        self._types = TypeResolver()
        self.conn = connect(pg.dsn.get_secret_value(), text_as_stored=True, options=session)
        self.db = open_snapshot_transaction(self.conn, exported)
        self._encoder = ReadEncoder(kafka.topic_prefix, self.db)
        where = "inside the exported snapshot" if exported else "resuming after a restart"
        log.info("snapshot of %s at %s (%s; %d tables done)", ", ".join(pg.tables),
                 consistent, where, len(self.done))

    def close(self) -> None:
        with contextlib.suppress(psycopg2.Error):
            self.conn.close()

    def _chunk(self, table: str, after: Any) -> Chunk:
        try:
            if self._reader is None:
                self._reader = TableReader(self.conn, table, self.pg, self._types,
                                           self.unconverted)
            reader = self._reader
            rows = reader.chunk(after, self.pg.snapshot_chunk_size)
        except psycopg2.Error as exc:
            raise translate(exc, f"reading {table} for the snapshot") from exc
        shape = reader.shape
        topic = self.kafka.raw_topic(table)
        self._now_ms = int(time.time() * 1000)
        self._shape, self._topic = shape, topic
        row_of, key_json, dumps = shape.row, shape.key_json, orjson.dumps

        def read_of(values: list[str | None]) -> tuple[str, TableShape, bytes, bytes]:
            row = row_of(tuple(values))
            return topic, shape, key_json(row), dumps(row)

        return rows, reader.key_of, read_of

    def _table_done(self, table: str) -> None:
        self._reader = None

    def _emit_middle(self, table: str, rows: Sequence[Any], start: int, stop: int,
                     read_of: Callable[[Any], Any]) -> list[Item]:
        shape = self._shape
        assert shape is not None, "rows are read before they are emitted"
        head, tail = self._encoder.halves(shape, "true", int(self.consistent), self.ts_us,
                                          self._now_ms)
        records: list[Item] = shape.reads(rows, start, stop, self._topic, head,  # type: ignore[assignment]
                                          tail)
        return records

    def _emit(self, table: str, read: Any, marker: str) -> Item:
        topic, shape, key, row = read
        value = self._encoder.value(shape, row, marker, int(self.consistent), self.ts_us,
                                    self._now_ms)
        return topic, key, value, ANY_PARTITION

    def _progress_extra(self) -> dict[str, Any]:
        return {"lsn": str(self.consistent), "ts_us": self.ts_us}
