"""The initial snapshot of a binlog capture: every row that exists at one binlog position,
as ``op: r`` events, before streaming from that position.

One connection opens ``START TRANSACTION WITH CONSISTENT SNAPSHOT`` and reads the binlog
position that transaction sees (:func:`pipeline.sources.mysql.server.begin_snapshot`; on
MariaDB without a global read lock). Every table is read inside that one transaction, in
primary-key chunks (keyset pagination, never OFFSET; one chunk in memory at a time), so
the rows are exactly those of that position; streaming then starts there. Why one
connection: MariaDB cannot share one transaction's snapshot with another connection, so
parallel readers would each need the position under ``FLUSH TABLES WITH READ LOCK``
(the RELOAD grant, and every writer of the server stopped while it is held); one reader
needs neither, and is bounded by Kafka and conversion, not by the reads.

Progress (tables done, the last key read) is confirmed like any position: after Kafka
acknowledged the chunk, into the offsets topic. A transaction's snapshot does not survive
a crash: a snapshot that died part-way reads its remaining chunks in a new consistent
snapshot, at a later position. That is still exact: the stream has not started and still
begins at the first snapshot's position, so every change after it is streamed; streamed
changes rank above every snapshot read of their row (``ChangePosition``, index version 0
for reads), and a row read later than the first position is the result of changes that
are streamed anyway. The reads carry their own snapshot's position as ``source.lsn`` (a
later snapshot's read of a row ranks above an earlier one's).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import pymysql

from pipeline.capture.source import ANY_PARTITION, Checkpoint, Item
from pipeline.config import MysqlSettings
from pipeline.events import snapshot_marker
from pipeline.positions import BinlogPosition, SnapshotPosition
from pipeline.sources.mysql import server
from pipeline.sources.mysql.chunks import TableReader, decode_key, encode_key
from pipeline.sources.mysql.envelope import EnvelopeWriter, EventContext, TableImage

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Held:
    """The last row read, held back until the next one tells its ``snapshot`` marker."""

    table: str
    image: TableImage
    row: dict[str, Any]
    #: The key of the row before it in its table (None: it is the table's first): where a
    #: snapshot resumes while this row is not yet published.
    previous_key: list[Any] | None
    first_overall: bool
    first_in_table: bool
    last_in_table: bool = False


class BinlogSnapshot:
    """Reads ``mysql.tables`` chunk by chunk in one consistent snapshot; a chunk per
    ``read``. ``progress``: what an interrupted snapshot saved (None: a new one)."""

    def __init__(self, settings: MysqlSettings, topics: dict[str, str], writer: EnvelopeWriter,
                 progress: dict[str, Any] | None) -> None:
        self.settings = settings
        self.topics = topics  # db.table -> raw topic
        self.writer = writer
        progress = progress or {}
        self.done: list[str] = list(progress.get("done", []))
        self.table: str | None = progress.get("table")
        saved_after = progress.get("after")
        self.after: list[Any] | None = decode_key(saved_after) if saved_after else None
        self.chunks = int(progress.get("chunks", 0))
        self.rows = int(progress.get("rows", 0))
        self.ts_s = int(progress.get("ts_s") or time.time())
        self.counts: dict[tuple[str, str], int] = {}
        self._held: _Held | None = None
        self._first = not self.done and self.table is None
        self._reader: TableReader | None = None
        self.conn = server.connect(settings)
        try:
            with self.conn.cursor() as cur:
                self.point: BinlogPosition = server.begin_snapshot(cur, settings.flavor)
        except pymysql.Error as exc:
            self.close()
            raise server.translate(exc, "starting the snapshot") from exc
        self._ctx = EventContext(self.point.file, self.point.pos, self.ts_s, 0, None, None)
        resumed = "resuming an interrupted one: " if progress else ""
        log.info("snapshot of %s at %s (%s%d tables done)", ", ".join(settings.tables),
                 self.point, resumed, len(self.done))

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
            out.append(Checkpoint(SnapshotPosition(self.chunks + 1, self.progress(True))))
            self.close()
            log.info("snapshot complete: %d rows", self.rows)
            return out
        try:
            with self.conn.cursor() as cur:
                if self._reader is None:
                    self._reader = TableReader(cur, table)
                reader = self._reader
                rows = reader.chunk(cur, self.after, self.settings.snapshot_chunk_size)
        except pymysql.Error as exc:
            raise server.translate(exc, f"reading {table} for the snapshot") from exc
        starting = self.after is None
        previous = self.after
        for i, values in enumerate(rows):
            if self._held is not None:
                self._emit(out)
            self._held = _Held(table, reader.image, reader.row(values), previous,
                               self._first, starting and i == 0)
            previous = reader.key_of(values)
            self._first = False
        self.rows += len(rows)
        if len(rows) < self.settings.snapshot_chunk_size:
            if self._held is not None and self._held.table == table:
                self._held.last_in_table = True
            self.done.append(table)
            self.table, self.after, self._reader = None, None, None
        else:
            self.table = table
            self.after = reader.key_of(rows[-1])
        self.chunks += 1
        out.append(Checkpoint(SnapshotPosition(self.chunks, self.progress(False))))
        return out

    def progress(self, complete: bool) -> dict[str, Any]:
        """What the offsets topic keeps: enough to resume after the last confirmed chunk.
        The row held back for its marker is not published yet: a resume reads it again."""
        done, table, after = list(self.done), self.table, self.after
        held = self._held
        if held is not None:
            done = [t for t in done if t != held.table]
            table, after = held.table, held.previous_key
        return {"complete": complete, "done": done, "table": table,
                "after": None if after is None else encode_key(after),
                "chunks": self.chunks, "rows": self.rows, "ts_s": self.ts_s,
                "file": self.point.file, "pos": self.point.pos}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()  # ends the read-only transaction

    def _next_table(self) -> str | None:
        if self.table is not None:
            return self.table
        return next((t for t in self.settings.tables if t not in self.done), None)

    def _emit(self, out: list[Item], last: bool = False) -> None:
        held = self._held
        assert held is not None
        marker = snapshot_marker(held.first_overall, last, held.first_in_table,
                                 held.last_in_table)
        key, value = self.writer.read(held.image, held.row, self._ctx, marker,
                                      int(time.time() * 1000))
        out.append((self.topics[held.table], key, value, ANY_PARTITION))
        counted = (held.image.table_id, "r")
        self.counts[counted] = self.counts.get(counted, 0) + 1
        self._held = None
