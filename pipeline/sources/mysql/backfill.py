"""Incremental backfills of a binlog capture: a table's existing rows read in chunks while
the binlog streams, with watermarks written as rows of ``mysql.signal_table`` (Debezium's
MySQL incremental snapshots; Netflix DBLog's algorithm).

For each chunk, in the capture process between two reads of the binlog:

1. a low watermark row (``type: snapshot-window-open``) is inserted into the signal table,
   the chunk is read (keyset order, one consistent read), and a high watermark row
   (``snapshot-window-close``) follows it; each insert is a transaction of its own, so both
   reach the binlog in commit order with every other change;
2. the window is open from the chunk's read until the stream reaches the high watermark:
   every change of the chunk's table the stream hands over meanwhile removes its key from
   the chunk (the binlog's version is at least as new as the row read). It opens where
   capture has read to, at or before the low watermark: wider than DBLog's window, never
   narrower. A transaction in the binlog before the low watermark is visible to the read
   (MariaDB commits in binlog order, and the low watermark's commit returned before the
   read), so a change capture handled before the window opened is in the chunk's rows;
3. at the high watermark, the chunk's remaining rows are published there, as ``op: r``
   events (``source.snapshot: incremental``, ``source.lsn`` the high watermark's), in order
   with the stream.

The decisions shared with the PostgreSQL source (signals, pause/resume/stop, progress saved
only once the position after the chunk's rows is confirmed) are
:class:`~pipeline.capture.backfill_window.BackfillBook`'s. A restart resumes after the last
chunk whose high watermark was confirmed; the watermarks of an abandoned chunk streamed
again are not its (each chunk has a mark of its own) and are ignored. A table that cannot be
read (dropped, a condition the server refuses) is marked failed; capture goes on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
import pymysql

from pipeline.capture.backfill_window import BackfillBook, TableBackfill
from pipeline.capture.offsets import OffsetStore
from pipeline.capture.signals import SignalError, parse
from pipeline.capture.source import ANY_PARTITION, Checkpoint, Item
from pipeline.config import KafkaSettings, MysqlSettings
from pipeline.errors import RetriableError, SourceSetupError
from pipeline.metrics import Metrics
from pipeline.positions import BinlogPosition
from pipeline.sources.mysql import server
from pipeline.sources.mysql.chunks import TableReader, decode_key, encode_key, quote
from pipeline.sources.mysql.envelope import EnvelopeWriter, EventContext
from pipeline.sources.mysql.reader import SignalRow, StreamItem

log = logging.getLogger(__name__)

#: Debezium's watermark signal types (MySQL's incremental snapshots write the same).
OPEN, CLOSE = "snapshot-window-open", "snapshot-window-close"
_GRANT = ("the capture user needs INSERT on it: GRANT INSERT ON {table} TO <mysql.user>")


def state_store(kafka: KafkaSettings, settings: MysqlSettings) -> OffsetStore:
    """Where a binlog capture's backfills are kept (read by ``cdc snapshot status`` too)."""
    return OffsetStore(kafka, {"source": "mysql-backfill", "server": settings.name,
                               "server_id": str(settings.server_id)})


def signal_table_sql(table: str) -> tuple[str, str]:
    """``(db, table)`` of ``mysql.signal_table`` quoted for SQL."""
    db, name = table.split(".", 1)
    return quote(db), quote(name)


def insert_signal_sql(table: str) -> str:
    db, name = signal_table_sql(table)
    return f"INSERT INTO {db}.{name} (id, type, data) VALUES (%s, %s, %s)"


@dataclass
class _Window:
    """One chunk from its read until the stream reaches its high watermark."""

    mark: str
    table: str
    topic: str
    reader: TableReader
    rows: list[tuple[Any, ...]]
    last_key: list[Any] | None
    #: Keys of the table the stream changed since the chunk was read: not published.
    changed: set[bytes] = field(default_factory=set)
    truncated: bool = False


class Backfills(BackfillBook):
    """The backfills of one binlog capture: requested by signal rows, read chunk by chunk,
    their watermarks written to and read back from the binlog."""

    listed_setting = "mysql.tables"

    def __init__(self, settings: MysqlSettings, kafka: KafkaSettings, metrics: Metrics,
                 topics: dict[str, str], writer: EnvelopeWriter) -> None:
        super().__init__(state_store(kafka, settings), metrics, settings.snapshot_chunk_size)
        assert settings.signal_table is not None
        self.settings = settings
        self.signal_table = settings.signal_table
        self.topics = topics  # db.table -> raw topic
        self.writer = writer
        self.listed = frozenset(settings.tables)
        self.window: _Window | None = None
        self._insert = insert_signal_sql(self.signal_table)
        self._conn: Any = None
        self._readers: dict[str, TableReader] = {}
        #: The newest position handed over (where a state taken now is saved).
        self._seen: BinlogPosition | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def open(self, start: BinlogPosition) -> None:
        """Check the signal table can take watermarks; load the saved state."""
        self._seen = start
        db, name = signal_table_sql(self.signal_table)
        try:
            with self._connection().cursor() as cur:
                cur.execute(f"SELECT id, type, data FROM {db}.{name} LIMIT 0")
                # Nothing of a rolled-back transaction reaches the binlog.
                cur.execute("START TRANSACTION")
                try:
                    cur.execute(self._insert, ("cdc-insert-check", "cdc-insert-check", ""))
                finally:
                    cur.execute("ROLLBACK")
        except pymysql.Error as exc:
            code = exc.args[0] if exc.args else None
            if code in server.MISSING_PRIVILEGE:
                raise SourceSetupError(f"mysql.signal_table {self.signal_table}: "
                                       + _GRANT.format(table=self.signal_table)) from exc
            if code in (1146, 1054):
                raise SourceSetupError(
                    f"mysql.signal_table {self.signal_table} does not exist or lacks the "
                    f"columns id, type, data ({exc.args[-1]}): create it with CREATE TABLE "
                    f"{db}.{name} (id VARCHAR(42) PRIMARY KEY, type VARCHAR(32) NOT NULL, "
                    f"data VARCHAR(2048)), and " + _GRANT.format(table=self.signal_table)
                ) from exc
            raise server.translate(exc, f"checking mysql.signal_table {self.signal_table}") \
                from exc
        self.load()

    def close(self) -> None:
        self.store.flush()
        self._readers.clear()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None
        self.window = None

    # -- the stream ----------------------------------------------------------------------
    def route(self, items: list[StreamItem]) -> list[Item]:
        """The records to publish: signal rows acted on (a high watermark becomes its
        chunk's rows, there), changes of the window's table taken out of the chunk."""
        out: list[Item] = []
        for item in items:
            if type(item) is SignalRow:
                self._signal_row(item, out)
                continue
            if type(item) is Checkpoint:
                self._seen = item.position
            else:
                window = self.window
                if window is not None and item[0] == window.topic:  # type: ignore[index]
                    key = item[1]  # type: ignore[index]
                    if key is None:  # a TRUNCATE: none of the chunk's rows exists now
                        window.truncated = True
                    else:
                        window.changed.add(key)
            out.append(item)  # type: ignore[arg-type]
        return out

    def _signal_row(self, row: SignalRow, out: list[Item]) -> None:
        values = {k: v.decode() if isinstance(v, bytes) else v for k, v in row.values.items()}
        kind, signal_id = str(values.get("type")), str(values.get("id") or "")
        if kind == OPEN:
            return
        if kind == CLOSE:
            window = self.window
            if window is not None and signal_id == f"{window.mark}-close":
                self._publish(window, row, out)
            return
        try:
            signal = parse(kind, values.get("data"), signal_id)
        except SignalError as exc:
            log.error("signal row %s in %s ignored: %s", signal_id, self.signal_table, exc)
            self.metrics.inc("cdc_capture_signals_total", type=kind, outcome="refused")
            return
        self.signal(signal, row.position, self.listed)

    def _publish(self, window: _Window, at: SignalRow, out: list[Item]) -> None:
        """The chunk's rows the stream did not change, at its high watermark."""
        ctx = EventContext(at.file, at.pos, at.ts_s, 0, None, None)
        now_ms = int(time.time() * 1000)
        reader, read = window.reader, self.writer.read
        published = 0
        if not window.truncated:
            for values in window.rows:
                after = reader.row(values)
                key = reader.image.key(after)
                if key in window.changed:
                    continue
                key, value = read(reader.image, after, ctx, "incremental", now_ms)
                out.append((window.topic, key, value, ANY_PARTITION))
                published += 1
        self.window = None
        self.chunk_done(window.table, published, len(window.rows),
                        None if window.last_key is None else encode_key(window.last_key))
        # Saved once the checkpoint after the watermark (after these rows) is confirmed.
        self._remember(at.position, durable=False)

    # -- chunks --------------------------------------------------------------------------
    def read_chunk(self) -> None:
        """Low watermark, the next chunk, high watermark: the window is open until the
        stream reaches the high one."""
        entry = next(t for t in self.tables if not t.finished)
        mark = uuid.uuid4().hex
        try:
            after = decode_key(entry.after) if entry.after else None
            with self._connection().cursor() as cur:
                reader = self._reader(cur, entry)
                self._watermark(cur, mark, OPEN)
                rows = reader.chunk(cur, after, entry.chunk_size)
                self._watermark(cur, mark, CLOSE)
        except pymysql.Error as exc:
            if not server.refused_statement(exc):
                error = server.translate(exc, f"reading a backfill chunk of {entry.table}")
                if isinstance(error, RetriableError):
                    raise error from exc
            self._failed(entry, exc)
            return
        except (SourceSetupError, ValueError) as exc:  # no primary key, a bad saved key
            self._failed(entry, exc)
            return
        last = reader.key_of(rows[-1]) if rows else after
        self.window = _Window(mark, entry.table, self.topics[entry.table], reader, rows, last)

    def _failed(self, entry: TableBackfill, exc: Exception) -> None:
        self._fail(entry, exc)
        self._remember(self._seen, durable=True)

    def _watermark(self, cur: Any, mark: str, kind: str) -> None:
        stamp = dt.datetime.now(dt.UTC).isoformat()
        which = "open" if kind == OPEN else "close"
        cur.execute(self._insert, (f"{mark}-{which}", kind,
                                   orjson.dumps({f"{which}WindowTimestamp": stamp}).decode()))

    def _estimate(self, entry: TableBackfill) -> int | None:
        """InnoDB's row estimate (no COUNT(*) of a big table)."""
        db, name = entry.table.split(".", 1)
        try:
            with self._connection().cursor() as cur:
                cur.execute("SELECT TABLE_ROWS FROM information_schema.TABLES "
                            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s", (db, name))
                found = cur.fetchone()
        except pymysql.Error:
            return None
        return int(found[0]) if found and found[0] is not None else None

    def _reader(self, cur: Any, entry: TableBackfill) -> TableReader:
        reader = self._readers.get(entry.table)
        if reader is None or reader.where != entry.where:
            reader = TableReader(cur, entry.table, entry.where)
            self._readers[entry.table] = reader
        return reader

    def _forget_reader(self, table: str) -> None:
        self._readers.pop(table, None)

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = server.connect(self.settings)
        return self._conn
