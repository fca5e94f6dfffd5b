"""Reading the binlog: events -> records and checkpoints, in a thread of its own.

:class:`BinlogDecoder` is the pure part: it follows transactions through the events
(MariaDB: a GTID event, then rows events, then XID, or a standalone GTID and one statement;
MySQL: a GTID event, then BEGIN .. XID/COMMIT, or a GTID and one statement) and knows at
every point where a restart has to begin:

* after a transaction: ``BinlogPosition(file, <its end>, gtids=<with it>)``;
* after each rows event inside one: ``BinlogPosition(file, <its start>, event=k)``, so a
  large transaction cut off by a crash is not published again from its first row, only
  from the first rows event Kafka had not acknowledged. A restart there skips the first
  ``event`` rows events of that transaction and ``row`` rows of the next.

:class:`BinlogReader` runs ``mysql-replication``'s stream in a thread (it blocks on the
socket) and hands the decoder's output over through a queue bounded in items (records and
checkpoints), not in events: a rows event of 8 KB carries some 300 rows, so a bound of 256
events let ~80,000 records wait in a large transaction (capture peaked at ~990 MB RSS
on 100,000 rows; ~120 MB with this bound). ``read``
never waits more than a few tens of milliseconds and a slow Kafka holds the binlog back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.constants import FIELD_TYPE
from pymysqlreplication.event import (
    GtidEvent,
    HeartbeatLogEvent,
    MariadbGtidEvent,
    QueryEvent,
    RotateEvent,
    XAPrepareEvent,
    XidEvent,
)
from pymysqlreplication.row_event import (
    DeleteRowsEvent,
    TableMapEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from pipeline.capture.source import ANY_PARTITION, EVERY_PARTITION, Checkpoint, Item
from pipeline.config import MysqlSettings
from pipeline.errors import RetriableError, SourceSetupError
from pipeline.positions import BinlogPosition, binlog_lsn
from pipeline.sources.mysql import library_fixes, server
from pipeline.sources.mysql.ddl import TableSchema, is_ddl
from pipeline.sources.mysql.envelope import (
    EnvelopeWriter,
    EventContext,
    TableImage,
    truncated_table,
)
from pipeline.sources.mysql.schema_history import SchemaHistory
from pipeline.sources.mysql.xa import FL_PREPARED_XA, PreparedTransactions, outcome

log = logging.getLogger(__name__)

EVENTS = [RotateEvent, MariadbGtidEvent, GtidEvent, QueryEvent, XidEvent, XAPrepareEvent,
          TableMapEvent, WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, HeartbeatLogEvent]
_ROWS_KIND = {WriteRowsEvent: "write", UpdateRowsEvent: "update", DeleteRowsEvent: "delete"}
#: MariaDB's GTID flag of a transaction that is one statement (DDL) without BEGIN/COMMIT.
_FL_STANDALONE = 1
#: Seconds between the server's heartbeats when the binlog is idle (the thread then sees
#: that it is asked to stop).
HEARTBEAT_S = 1.0
#: Seconds without a byte from the server before the connection counts as lost.
READ_TIMEOUT_S = 30


def _start(event: Any) -> int:
    return int(event.packet.log_pos - event.packet.event_size)


def _end(event: Any) -> int:
    return int(event.packet.log_pos)


@dataclass(frozen=True, slots=True)
class SignalRow:
    """A row inserted into ``mysql.signal_table`` (a signal, or a backfill's watermark),
    where the binlog has it; the source acts on it, it is never published."""

    values: dict[str, Any]
    file: str
    pos: int  # its rows event's start
    ts_s: int
    #: Where a restart resumes after it (the checkpoint that follows it).
    position: BinlogPosition


#: What the reader hands over: records and checkpoints, and signal rows for the source.
StreamItem = Item | SignalRow


@dataclass(slots=True)
class _Rows:
    """The rows of one rows event of a captured table, decoded but not yet records (held
    that way while their XA transaction is prepared)."""

    kind: str  # write, update or delete
    image: TableImage
    rows: list[Any]
    first: int  # the index of rows[0] in its event (a restart may skip some)
    ctx: EventContext
    topic: str
    table_id: str


class MariadbGtids:
    """MariaDB's GTID position: the last GTID per replication domain."""

    def __init__(self, text: str) -> None:
        self.by_domain: dict[str, str] = {}
        for gtid in filter(None, (part.strip() for part in text.split(","))):
            self.add(gtid)

    def add(self, gtid: str) -> None:
        self.by_domain[gtid.split("-", 1)[0]] = gtid

    def __str__(self) -> str:
        return ",".join(self.by_domain[d] for d in sorted(self.by_domain, key=int))


class BinlogDecoder:
    """Binlog events -> items (records and checkpoints) for the captured ``tables``."""

    def __init__(self, start: BinlogPosition, tables: dict[str, str], writer: EnvelopeWriter,
                 tombstones: bool, track_gtids: bool, signal_table: str | None = None,
                 history: SchemaHistory | None = None, xa_held_records: int = 100_000) -> None:
        self.file = start.file
        self.tables = tables  # db.table -> raw topic
        self.signal_table = signal_table
        #: Names the columns of table maps that do not (binlog_row_metadata not FULL).
        self.history = history
        self.writer = writer
        self.tombstones = tombstones
        self.gtids = MariadbGtids(start.gtids) if track_gtids else None
        self._skip_next: tuple[int, int] | None = (start.event, start.row) if (
            start.event or start.row) else None
        self._skip: tuple[int, int] | None = None
        self._keys: dict[int, tuple[str, ...]] = {}
        #: table id -> its table map's null bitmap (bit i: column i is nullable)
        self._null_bitmaps: dict[int, bytes] = {}
        #: table id -> (the table map's column list it was made of, image)
        self._images: dict[int, tuple[Any, TableImage]] = {}
        self.counts: dict[tuple[str, str], int] = {}
        #: XA transactions between their PREPARE and their outcome (:mod:`.xa`).
        self.xa = PreparedTransactions(xa_held_records)
        self._end_txn()

    def _end_txn(self) -> None:
        self.txn_start: int | None = None
        self.txn_commit: int | None = None  # binlog_lsn of txn_start: source.sequence[0]
        self.txn_gtid: str | None = None
        self.txn_open = False
        self.thread: int | None = None
        self.events_done = 0
        self._skip = None

    def _begin(self, start: int, gtid: str | None, open_now: bool) -> None:
        self.txn_start, self.txn_gtid, self.txn_open = start, gtid, open_now
        self.txn_commit = binlog_lsn(self.file, start)
        self.events_done, self.thread = 0, None
        self._skip, self._skip_next = self._skip_next, None

    def _gtids_text(self) -> str:
        return str(self.gtids) if self.gtids is not None else ""

    def feed(self, event: Any, now_ms: int) -> list[Any]:
        """The items one event yields (often none)."""
        items = self._feed(event, now_ms)
        if items and self.xa.holding:
            items = self.xa.hold(items)
        return items

    def _feed(self, event: Any, now_ms: int) -> list[Any]:
        if isinstance(event, RotateEvent):
            self.file = event.next_binlog
            return []
        if isinstance(event, MariadbGtidEvent):
            self._begin(_start(event), event.gtid, not event.flags & _FL_STANDALONE)
            if event.flags & FL_PREPARED_XA:
                self._begin_xa()
            return []
        if isinstance(event, GtidEvent):
            self._begin(_start(event), event.gtid, False)
            return []
        if isinstance(event, TableMapEvent):
            self._null_bitmaps[event.table_id] = event.null_bitmask
            meta = event.optional_metadata
            table_id = f"{event.schema}.{event.table}"
            if not meta.column_name_list and (table_id in self.tables
                                              or table_id == self.signal_table):
                self._keys[event.table_id] = self._name_columns(event, table_id)
                return []
            if meta.column_name_list and event.columns and event.columns[0].name is None:
                sync_column_info(event)  # the stream opened while the server was MINIMAL
            names = [c.name for c in event.columns]
            keys = list(meta.simple_primary_key_list) or list(meta.primary_keys_with_prefix)
            self._keys[event.table_id] = tuple(names[i] for i in keys)
            return []
        if isinstance(event, XidEvent):
            return self._commit(event)
        if isinstance(event, XAPrepareEvent):
            xid = (event.xid_format_id, event.xid_gtrid, event.xid_bqual)
            released = self.xa.prepared(xid, event.one_phase)
            return [*self._records(released, None, now_ms), *self._commit(event)]
        if isinstance(event, QueryEvent):
            return self._query(event, now_ms)
        kind = _ROWS_KIND.get(type(event))
        if kind is not None:
            return self._rows(event, kind, now_ms)
        return []

    def _name_columns(self, event: Any, table_id: str) -> tuple[str, ...]:
        """Name a table map's columns (and ENUM/SET labels) from the schema history, as of
        the event, where the server did not (binlog_row_metadata MINIMAL); its key."""
        if self.history is None:
            raise SourceSetupError(f"a change of {table_id} at {self.file}:{_start(event)} "
                                   "carries no column names (binlog_row_metadata is not "
                                   "FULL) and capture keeps no schema history")
        schema = self.history.schema_of(table_id)
        if len(schema.columns) != len(event.columns):
            raise SourceSetupError(
                f"a change of {table_id} at {self.file}:{_start(event)} has "
                f"{len(event.columns)} columns where the schema history has "
                f"{len(schema.columns)} ({', '.join(c.name for c in schema.columns)}): a DDL "
                f"statement the history missed changed it. Remedy: take a new snapshot "
                f"with `cdc capture --reset-position`")
        name_table_map(event, schema)
        return schema.key

    def _begin_xa(self) -> None:
        """The transaction begun is an XA transaction's prepared part: held until its
        outcome, from the position before it (its GTID not yet among the gtids)."""
        assert self.txn_start is not None
        self.xa.begin(BinlogPosition(self.file, self.txn_start, gtids=self._gtids_text()),
                      resumed_inside=self._skip is not None)

    def _commit(self, event: Any) -> list[Item]:
        if self.gtids is not None and self.txn_gtid:
            self.gtids.add(self.txn_gtid)
        position = BinlogPosition(self.file, _end(event), gtids=self._gtids_text())
        self._end_txn()
        return [Checkpoint(position, int(event.timestamp) * 1_000_000)]

    def _query(self, event: Any, now_ms: int) -> list[Item]:
        query = event.query.strip() if isinstance(event.query, str) else ""
        verb = query.upper()
        if verb == "BEGIN" or verb.startswith("XA START"):
            if self.txn_start is None:
                self._begin(_start(event), None, True)
            self.txn_open = True
            self.thread = event.slave_proxy_id
            if verb.startswith("XA START"):  # MySQL: its end (an XA_PREPARE event) tells
                self._begin_xa()             # whether it commits now (ONE PHASE) or later
            return []
        if verb.startswith("XA END"):  # an XA_PREPARE event ends the transaction
            return []
        if verb in ("COMMIT", "ROLLBACK"):
            return self._commit(event)
        decided = outcome(query)  # a prepared XA transaction's end: its records, or none
        out: list[Item] = []
        if decided is not None:
            commit = binlog_lsn(self.file, _start(event) if self.txn_start is None
                                else self.txn_start)
            out = self._records(self.xa.decided(*decided), commit, now_ms)
        db = event.schema.decode() if isinstance(event.schema, bytes) else str(event.schema)
        if self.history is not None and is_ddl(query):
            self.history.apply(query, db, self._after(event))
        table = truncated_table(query, db)
        if table is not None and table in self.tables:
            start = _start(event) if self.txn_start is None else self.txn_start
            if self.txn_start is None:
                self._begin(start, None, False)
            ctx = EventContext(self.file, _start(event), int(event.timestamp),
                               event.packet.server_id, self.txn_gtid, event.slave_proxy_id,
                               self.txn_commit)
            t_db, t_table = table.split(".", 1)
            value = self.writer.truncate(t_db, t_table, ctx, now_ms)
            out.append((self.tables[table], None, value, EVERY_PARTITION))
            self._count(table, "t")
        if not self.txn_open:  # a statement of its own (DDL): its transaction ends here
            out.extend(self._commit(event))
        return out

    def _after(self, event: Any) -> BinlogPosition:
        """Where a restart resumes after statement ``event`` (a DDL statement is a
        transaction of its own: the checkpoint :meth:`_commit` makes of it)."""
        gtids = MariadbGtids(self._gtids_text()) if self.gtids is not None else None
        if gtids is not None and self.txn_gtid:
            gtids.add(self.txn_gtid)
        return BinlogPosition(self.file, _end(event), gtids=str(gtids or ""))

    def _image(self, event: Any) -> TableImage:
        """The table as this event's table map describes it: its columns, their types and
        its key as of the event (binlog_row_metadata=FULL), not as of now."""
        cached = self._images.get(event.table_id)
        if cached is not None and cached[0] is event.columns:
            return cached[1]
        keys = self._keys.get(event.table_id, ())
        image = TableImage.of(event.schema, event.table, event.columns, keys,
                              self._null_bitmaps.get(event.table_id))
        self._images[event.table_id] = (event.columns, image)
        return image

    def _rows(self, event: Any, kind: str, now_ms: int) -> list[Any]:
        index = self.events_done
        self.events_done += 1
        if self.txn_start is None:  # rows without a transaction start: resume at the event
            self._begin(_start(event), None, True)
            index, self.events_done = 0, 1
        assert self.txn_start is not None
        checkpoint = Checkpoint(BinlogPosition(self.file, self.txn_start, self.events_done,
                                               gtids=self._gtids_text()))
        skip_rows = 0
        if self._skip is not None:
            skip_event, skip_row = self._skip
            if index < skip_event:
                return self._out([], 0, checkpoint, now_ms)
            if index == skip_event:
                skip_rows = skip_row
        table_id = f"{event.schema}.{event.table}"
        topic = self.tables.get(table_id)
        rows = event.rows[skip_rows:] if skip_rows else event.rows
        if topic is None:
            if table_id == self.signal_table and kind == "write":
                signals = [SignalRow(raw["values"], self.file, _start(event),
                                     int(event.timestamp), checkpoint.position) for raw in rows]
                return self._out(signals, len(signals), checkpoint, now_ms)
            return self._out([], 0, checkpoint, now_ms)
        image = self._image(event)
        if not image.key_names:
            raise SourceSetupError(
                f"a change of {table_id} at {self.file}:{_start(event)} names no primary key: "
                f"add one to the table or remove it from mysql.tables")
        ctx = EventContext(self.file, _start(event), int(event.timestamp),
                           event.packet.server_id, self.txn_gtid, self.thread, self.txn_commit)
        decoded = _Rows(kind, image, rows, skip_rows, ctx, topic, table_id)
        return self._out([decoded], len(rows), checkpoint, now_ms)

    def _out(self, entries: list[Any], size: int, checkpoint: Checkpoint,
             now_ms: int) -> list[Any]:
        """The items of one rows event: its records (or signal rows), then ``checkpoint``;
        nothing while they belong to a prepared XA transaction that is held."""
        xa = self.xa
        if xa.reading:
            entries = xa.take(entries, size)
            if not xa.publishing:
                return []  # held (and no position inside a held group)
        out = self._records(entries, None, now_ms)
        out.append(checkpoint)
        return out

    def _records(self, entries: list[Any], commit: int | None, now_ms: int) -> list[Any]:
        """Records of decoded rows (signal rows pass as they are); ``commit``: the XA COMMIT
        that publishes them, in place of their own transaction's."""
        out: list[Any] = []
        writer, tombstones = self.writer, self.tombstones
        for entry in entries:
            if type(entry) is not _Rows:
                out.append(entry)
                continue
            ctx = entry.ctx if commit is None else dataclasses.replace(entry.ctx, commit=commit)
            topic, kind, image = entry.topic, entry.kind, entry.image
            for row, raw in enumerate(entry.rows, entry.first):
                for op, key, value in writer.changes(kind, image, raw, ctx, row, now_ms):
                    out.append((topic, key, value, ANY_PARTITION))
                    if op == "d" and tombstones:
                        out.append((topic, key, None, ANY_PARTITION))
                    self._count(entry.table_id, op)
        return out

    def _count(self, table: str, op: str) -> None:
        self.counts[(table, op)] = self.counts.get((table, op), 0) + 1


#: A character set for ENUM/SET columns: mysql-replication wants one, but their values are
#: the labels of the schema history, not decoded bytes (utf8mb4_general_ci).
_LABELS_COLLATION = 45


def name_table_map(event: Any, schema: TableSchema) -> None:
    """Give a table map without names what FULL metadata would: column names, ENUM/SET
    labels. mysql-replication (1.0.17, pinned) then applies them with the signedness and
    character sets the event does carry, as for FULL metadata, through the same method."""
    meta = event.optional_metadata
    enums: list[list[str]] = []
    sets: list[list[str]] = []
    for column, known in zip(event.columns, schema.columns, strict=True):
        if column.type in (FIELD_TYPE.ENUM, FIELD_TYPE.SET):
            if not known.type.startswith(("enum", "set")):
                raise SourceSetupError(
                    f"column {known.name} of {event.schema}.{event.table} is an ENUM or SET "
                    f"in the binlog but {known.type} in the schema history: a DDL statement "
                    f"the history missed changed it; take a new snapshot with `cdc capture "
                    f"--reset-position`")
            (enums if column.type == FIELD_TYPE.ENUM else sets).append(list(known.labels))
    meta.column_name_list = [c.name for c in schema.columns]
    meta.set_enum_str_value_list = enums
    meta.set_str_value_list = sets
    meta.enum_and_set_collation_list = [_LABELS_COLLATION] * (len(enums) + len(sets))
    meta.simple_primary_key_list = [i for i in map(schema.index, schema.key) if i is not None]
    sync_column_info(event)


def sync_column_info(event: Any) -> None:
    """Apply a table map's optional metadata to its columns. mysql-replication does so only
    when ``binlog_row_metadata`` was FULL as the stream opened (the server can change it at
    any time; each event says what it carries)."""
    event._TableMapEvent__optional_meta_data = True
    event._sync_column_info()


class _OneConnectionEach:
    """pymysql.connect for mysql-replication that refuses to reconnect. The library
    reconnects by itself after a lost connection, from the last event it read, which can
    be inside a transaction whose table maps it would then lack; capture instead reopens
    from its last confirmed position (a RetriableError)."""

    def __init__(self) -> None:
        self.made = 0

    def __call__(self, **kwargs: Any) -> Any:
        if self.made >= 2:  # the stream and the control connection
            raise RetriableError("the binlog connection was lost")
        self.made += 1
        return pymysql.connect(**kwargs)


class BinlogReader:
    """The binlog stream in a thread, from ``start``, through ``decoder``."""

    def __init__(self, settings: MysqlSettings, start: BinlogPosition, decoder: BinlogDecoder,
                 max_queued: int = 4096) -> None:
        self.settings = settings
        self.start_at = start
        self.decoder = decoder
        #: At most about this many items wait (one event's items always pass alone).
        self.max_queued = max_queued
        self._queue: queue.Queue[list[StreamItem] | BaseException] = queue.Queue()
        self._queued = 0
        self._room = threading.Condition()
        self._stop = threading.Event()
        self._stream: BinLogStreamReader | None = None
        self._thread = threading.Thread(target=self._run, name="binlog-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _open_stream(self) -> BinLogStreamReader:
        s = self.settings
        where: dict[str, Any]
        if s.resume_by == "gtid":
            where = {"auto_position": self.start_at.gtids, "is_mariadb": True}
        else:
            # Not is_mariadb: mysql-replication 1.0.17 then ignores log_file/log_pos and
            # starts at the oldest binlog (checked on MariaDB 10.11). MySQL's COM_BINLOG_DUMP
            # takes file:pos, and MariaDB honours it (still sending its GTID events).
            where = {"log_file": self.start_at.file, "log_pos": self.start_at.pos,
                     "resume_stream": True}
        settings = dict(server.connection_settings(s), read_timeout=READ_TIMEOUT_S)
        library_fixes.install()  # text as the server's character sets, no date raises
        return BinLogStreamReader(
            connection_settings=settings, server_id=s.server_id, blocking=True,
            only_events=EVENTS, slave_heartbeat=HEARTBEAT_S, enable_logging=False,
            pymysql_wrapper=_OneConnectionEach(), **where)

    def _run(self) -> None:
        now_ms = int(time.time() * 1000)
        try:
            self._stream = stream = self._open_stream()
            for event in stream:
                if self._stop.is_set():
                    return
                if int(time.time() * 1000) - now_ms > 100:
                    now_ms = int(time.time() * 1000)
                items = self.decoder.feed(event, now_ms)
                if items:
                    self._put(items)
        except pymysql.Error as exc:
            self._put(server.translate(exc, "reading the binlog"))
        except BaseException as exc:  # noqa: BLE001 - handed to the capture loop as is
            self._put(exc)
        finally:
            if self._stream is not None:
                with contextlib.suppress(Exception):
                    self._stream.close()

    def _put(self, entry: list[StreamItem] | BaseException) -> None:
        size = len(entry) if isinstance(entry, list) else 0
        with self._room:
            while self._queued and self._queued + size > self.max_queued:
                if self._stop.is_set():
                    return
                self._room.wait(0.1)
            self._queued += size
        self._queue.put(entry)

    def take(self, max_items: int, wait_s: float) -> list[StreamItem]:
        """Up to about ``max_items`` items; raises what the thread raised."""
        out: list[StreamItem] = []
        get: Callable[..., Any] = self._queue.get
        try:
            entry = get(timeout=wait_s)
            while True:
                if isinstance(entry, BaseException):
                    raise entry
                out.extend(entry)
                self._taken(len(entry))
                if len(out) >= max_items:
                    break
                entry = get(block=False)
        except queue.Empty:
            pass
        if not out and not self._thread.is_alive() and self._queue.empty():
            raise RetriableError("the binlog reader stopped")
        return out

    def _taken(self, size: int) -> None:
        with self._room:
            self._queued -= size
            self._room.notify()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive() and self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()  # unblocks a read the heartbeat did not end
            self._thread.join(timeout)
