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
from typing import Any

import pymysql

from pipeline.capture.chunked_snapshot import Chunk, ChunkedSnapshot
from pipeline.capture.source import ANY_PARTITION, Item
from pipeline.config import MysqlSettings
from pipeline.positions import BinlogPosition
from pipeline.sources.mysql import server
from pipeline.sources.mysql.chunks import TableReader, decode_key, encode_key
from pipeline.sources.mysql.envelope import EnvelopeWriter, EventContext, TableImage

log = logging.getLogger(__name__)


class BinlogSnapshot(ChunkedSnapshot):
    """Reads ``mysql.tables`` chunk by chunk in one consistent snapshot; a chunk per
    ``read``. ``progress``: what an interrupted snapshot saved (None: a new one)."""

    def __init__(self, settings: MysqlSettings, topics: dict[str, str], writer: EnvelopeWriter,
                 progress: dict[str, Any] | None) -> None:
        super().__init__(settings.tables, settings.snapshot_chunk_size, progress)
        self.settings = settings
        self.topics = topics  # db.table -> raw topic
        self.writer = writer
        self.ts_s = int((progress or {}).get("ts_s") or time.time())
        self.counts: dict[tuple[str, str], int] = {}
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

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()  # ends the read-only transaction

    def _chunk(self, table: str, after: Any) -> Chunk:
        try:
            with self.conn.cursor() as cur:
                if self._reader is None:
                    self._reader = TableReader(cur, table)
                reader = self._reader
                rows = reader.chunk(cur, after, self.settings.snapshot_chunk_size)
        except pymysql.Error as exc:
            raise server.translate(exc, f"reading {table} for the snapshot") from exc
        image = reader.image

        def read_of(values: Any) -> tuple[TableImage, dict[str, Any]]:
            return image, reader.row(values)

        return rows, reader.key_of, read_of

    def _table_done(self, table: str) -> None:
        self._reader = None

    def _emit(self, table: str, read: Any, marker: str) -> Item:
        image, row = read
        key, value = self.writer.read(image, row, self._ctx, marker, int(time.time() * 1000))
        counted = (image.table_id, "r")
        self.counts[counted] = self.counts.get(counted, 0) + 1
        return self.topics[table], key, value, ANY_PARTITION

    def _save_key(self, key: Any) -> Any:
        return encode_key(key)

    def _load_key(self, saved: Any) -> Any:
        return decode_key(saved)

    def _progress_extra(self) -> dict[str, Any]:
        return {"ts_s": self.ts_s, "file": self.point.file, "pos": self.point.pos}
