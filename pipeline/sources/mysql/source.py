"""The MySQL/MariaDB binlog as a :class:`~pipeline.capture.source.ChangeSource`.

Capture registers as a replica (``mysql.server_id``) and reads the binlog from where it
last confirmed. That position lives only in Kafka (the offsets topic, as Kafka Connect keeps
Debezium's): a server keeps no per-replica position. It is saved in :meth:`confirm`, which
the capture loop calls once Kafka acknowledged every record before it, so a kill at any
moment resumes with nothing lost; what was published but not confirmed is published again
(at least once; the sinks are idempotent and the records carry the same ``source.lsn``).

Without a saved position, ``mysql.snapshot_mode`` decides: ``initial`` (the default),
``initial_only`` and ``when_needed`` first read the existing rows in one consistent
snapshot (:mod:`pipeline.sources.mysql.snapshot`) and stream from its binlog position;
``never`` starts at the current end of the binlog. Either position is saved before
anything is read: a crash before the first confirmation must not move the start past
changes nobody published. A saved position the server no longer has (binlog purged) stops
capture with the remedy (``when_needed``: takes a new snapshot instead); it never silently
starts somewhere else.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import pymysql

from pipeline.capture.offsets import OffsetStore
from pipeline.capture.source import Item
from pipeline.config import KafkaSettings, MysqlSettings
from pipeline.errors import RetriableError, SourceExhausted, SourceSetupError
from pipeline.metrics import Metrics
from pipeline.positions import BinlogPosition, SnapshotPosition
from pipeline.sources.mysql import server
from pipeline.sources.mysql.backfill import Backfills, state_store
from pipeline.sources.mysql.envelope import EnvelopeWriter
from pipeline.sources.mysql.reader import BinlogDecoder, BinlogReader
from pipeline.sources.mysql.schema_history import SchemaHistory, read_schemas, schemas_at
from pipeline.sources.mysql.snapshot import BinlogSnapshot

log = logging.getLogger(__name__)

#: The longest ``read`` waits when the binlog has nothing new.
_IDLE_WAIT_S = 0.05
_RESET = ("`cdc capture --reset-position` (which takes a new snapshot of the tables with "
          "mysql.snapshot_mode initial), or mysql.snapshot_mode when_needed")


class MysqlBinlogSource:
    """Publishes the row changes of ``mysql.tables`` from the binlog."""

    def __init__(self, settings: MysqlSettings, kafka: KafkaSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.kafka = kafka
        self.metrics = metrics
        self.name = f"{settings.flavor} binlog {settings.host}:{settings.port}"
        identity = {"server": settings.name, "server_id": str(settings.server_id)}
        self.offsets = OffsetStore(kafka, {"source": "mysql", **identity})
        self.snapshot_offsets = OffsetStore(kafka, {"source": "mysql-snapshot", **identity})
        tracked = settings.tables + ((settings.signal_table,) if settings.signal_table else ())
        self.history = SchemaHistory(
            kafka, settings.schema_history_topic or f"{kafka.offsets_topic}.schema-history",
            {"source": "mysql", **identity}, tracked, strict=False)
        self._reader: BinlogReader | None = None
        self._decoder: BinlogDecoder | None = None
        self._snapshot: BinlogSnapshot | None = None
        self._start: BinlogPosition | None = None
        self._topics: dict[str, str] = {}
        self._writer = EnvelopeWriter(settings.flavor, settings.name)
        #: Incremental backfills (mysql.signal_table set), else None.
        self.backfills: Backfills | None = None

    # -- ChangeSource --------------------------------------------------------------------
    def open(self) -> list[str]:
        s = self.settings
        if s.resume_by == "gtid" and s.flavor != "mariadb":
            raise SourceSetupError("mysql.resume_by gtid follows MariaDB's GTIDs only; use "
                                   "resume_by position with flavor mysql")
        self._topics = {t: self.kafka.raw_topic(t) for t in s.tables}
        self._snapshot = None
        conn = server.connect(s)
        try:
            with conn.cursor() as cur:
                server.check(cur, s.tables)
                mode = server.row_metadata(cur)
                self.history.strict = mode != "FULL"
                log.info("%s: binlog_row_metadata=%s: %s", self.name, mode,
                         "events name their columns" if mode == "FULL" else
                         "columns are named from the schema history in "
                         f"'{self.history.topic}'")
                start, progress = self._plan(cur)
        except pymysql.Error as exc:
            raise server.translate(exc, f"checking {self.name}") from exc
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        if start is None:
            start = self._new_snapshot()
        elif progress is not None:
            self._snapshot = BinlogSnapshot(s, self._topics, self._writer, progress)
        self._start = start
        if s.signal_table is not None:
            self.backfills = Backfills(s, self.kafka, self.metrics, self._topics, self._writer)
            self.backfills.open(start)
        if self._snapshot is None:
            self._start_streaming()
        return list(self._topics.values())

    def _plan(self, cur: Any) -> tuple[BinlogPosition | None, dict[str, Any] | None]:
        """Where the stream starts, and the progress of a snapshot to finish first.
        ``(None, None)``: no position yet, take a new snapshot."""
        mode = self.settings.snapshot_mode
        saved = self.offsets.load()
        progress = self.snapshot_offsets.load()
        unfinished = progress is not None and not progress.get("complete")
        if saved is None:
            if mode != "never":
                return None, None
            start, schemas = schemas_at(cur, self.history.tracked_tables, lambda: (
                server.current_position(cur, self.settings.flavor)))
            self.history.load(start)
            self.history.start(start, schemas)
            self._save(start)
            log.info("%s: no saved position, starting at the end of the binlog "
                     "(mysql.snapshot_mode never)", self.name)
            return start, None
        start = self._saved_position(saved)
        if self.settings.resume_by != "gtid":
            files = server.binlog_files(cur)
            if start.file not in files:
                if mode == "when_needed":
                    log.warning("%s: binlog file %s of the saved position was purged: "
                                "taking a new snapshot (mysql.snapshot_mode when_needed)",
                                self.name, start.file)
                    return None, None
                raise SourceSetupError(
                    f"{self.name} no longer has binlog file {start.file} (the oldest it "
                    f"keeps is {files[0] if files else 'none'}): the changes capture has not "
                    f"published yet were purged (expire_logs_days / "
                    f"binlog_expire_logs_seconds). Remedy: {_RESET}")
        self._load_history(start)
        if unfinished:
            return start, progress
        if mode == "initial_only":
            raise SourceExhausted("nothing to do: the snapshot is complete or was not "
                                  "needed (mysql.snapshot_mode initial_only)")
        return start, None

    def _load_history(self, start: BinlogPosition) -> None:
        missing = self.history.load(start)
        if missing and self.history.strict:
            raise SourceSetupError(
                f"the server does not name the columns of its row events "
                f"(binlog_row_metadata is not FULL) and the schema history "
                f"'{self.history.topic}' has no schema of {', '.join(missing)} at the saved "
                f"position {start} (capture started before it kept one, or the table was "
                f"added to mysql.tables since). Remedy: {_RESET}, or set "
                f"binlog_row_metadata=FULL")
        if missing:
            log.info("%s: no schema history of %s at %s (not needed while the server sends "
                     "FULL row metadata)", self.name, ", ".join(missing), start)

    def _saved_position(self, saved: dict[str, Any]) -> BinlogPosition:
        try:
            start = BinlogPosition.from_dict(saved)
        except ValueError as exc:
            raise SourceSetupError(f"the saved position of {self.name} in "
                                   f"'{self.kafka.offsets_topic}' is unreadable ({exc}); "
                                   f"remedy: {_RESET}") from exc
        if self.settings.resume_by == "gtid" and not start.gtids:
            raise SourceSetupError(f"the saved position {start} has no GTIDs to resume "
                                   f"by (mysql.resume_by gtid); use resume_by position "
                                   f"or {_RESET}")
        return start

    def _new_snapshot(self) -> BinlogPosition:
        """Open a consistent snapshot and save its position as where the stream starts.

        The pending snapshot is saved before the position: a crash in between must not
        leave a saved position whose existing rows were never read (the next start would
        only stream)."""
        snapshot = self._snapshot_with_schemas()
        try:
            self.snapshot_offsets.save(snapshot.progress(False))
            if self.snapshot_offsets.flush():
                raise RetriableError("could not record the pending snapshot in Kafka")
            self._save(snapshot.point)
        except BaseException:
            snapshot.close()
            raise
        self._snapshot = snapshot
        return snapshot.point

    def _snapshot_with_schemas(self, attempts: int = 5) -> BinlogSnapshot:
        """A new snapshot, its tables' schemas at its position recorded in the history
        (read before and after the position is taken: equal reads mean no DDL between)."""
        tables = self.history.tracked_tables
        for _ in range(attempts):
            conn = server.connect(self.settings)
            try:
                with conn.cursor() as cur:
                    before = read_schemas(cur, tables)
            except pymysql.Error as exc:
                raise server.translate(exc, "reading the tables' schemas") from exc
            finally:
                with contextlib.suppress(Exception):
                    conn.close()
            snapshot = BinlogSnapshot(self.settings, self._topics, self._writer, None)
            try:
                with snapshot.conn.cursor() as cur:
                    after = read_schemas(cur, tables)
                if after == before:
                    self.history.load(snapshot.point)
                    self.history.start(snapshot.point, after)
                    return snapshot
            except pymysql.Error as exc:
                snapshot.close()
                raise server.translate(exc, "reading the tables' schemas") from exc
            except BaseException:
                snapshot.close()
                raise
            snapshot.close()
            log.info("%s: a table's schema changed as the snapshot began; again", self.name)
        raise RetriableError("the captured tables' schemas kept changing as the snapshot "
                             "began (DDL running)")

    def _save(self, start: BinlogPosition) -> None:
        self.offsets.save(start.to_dict())
        if self.offsets.flush():
            raise RetriableError("could not save the starting binlog position to Kafka")

    def _start_streaming(self) -> None:
        s, start = self.settings, self._start
        assert start is not None
        self._decoder = BinlogDecoder(start, self._topics, self._writer,
                                      self.kafka.tombstones_on_delete,
                                      track_gtids=s.flavor == "mariadb",
                                      signal_table=s.signal_table, history=self.history,
                                      xa_held_records=s.xa_held_records)
        self._reader = BinlogReader(s, start, self._decoder)
        self._reader.start()
        log.info("%s: reading the binlog from %s (tables %s)", self.name, start,
                 ", ".join(s.tables))

    def read(self, max_items: int) -> list[Item]:
        snapshot = self._snapshot
        if snapshot is not None:
            if not snapshot.finished:
                items = snapshot.read()
                self._count(snapshot.counts)
                return items
            self._snapshot = None  # its completion was handed out: stream (or stop)
            if self.settings.snapshot_mode == "initial_only":
                raise SourceExhausted("snapshot complete (mysql.snapshot_mode initial_only)")
            self._start_streaming()
        assert self._reader is not None and self._decoder is not None
        taken = self._reader.take(max_items, _IDLE_WAIT_S)
        self._count(self._decoder.counts)
        backfills = self.backfills
        if backfills is None:
            return taken  # type: ignore[return-value] # no signal table: no signal rows
        items = backfills.route(taken)
        if backfills.wants_chunk:
            backfills.read_chunk()
        return items

    def _count(self, counts: dict[tuple[str, str], int]) -> None:
        for (table, op), n in counts.items():
            self.metrics.inc("cdc_capture_events_total", n, table=table, op=op)
        counts.clear()

    def confirm(self, position: BinlogPosition | SnapshotPosition) -> None:
        """Kafka has every record up to ``position``: save it (delivery checked by the
        next save or the flush at close)."""
        if isinstance(position, SnapshotPosition):
            self.snapshot_offsets.save(position.progress)
            return
        self.offsets.save(position.to_dict())
        if self.backfills is not None:
            self.backfills.confirmed(position)

    def keepalive(self) -> None:
        """Nothing to do: the server sends heartbeats and waits for a slow replica."""

    def close(self) -> None:
        if self._snapshot is not None:
            self._snapshot.close()
        self._snapshot = None
        if self._reader is not None:
            self._reader.stop()
        self._reader = None
        if self.backfills is not None:
            self.backfills.close()
        if self.snapshot_offsets.flush():
            log.warning("%s: the snapshot's last confirmed progress may not be saved in "
                        "Kafka; the next start reads some chunks again", self.name)
        if self.offsets.flush():
            log.warning("%s: the last confirmed position may not be saved in Kafka; the "
                        "next start publishes again from an earlier one", self.name)

    def forget_positions(self) -> None:
        """Forget the saved binlog position and snapshot progress: the next start begins
        as the first did (a snapshot, or the binlog's end, per mysql.snapshot_mode)."""
        self.offsets.forget()
        self.snapshot_offsets.forget()
        self.history.forget()
        if self.settings.signal_table is not None:
            state_store(self.kafka, self.settings).forget()
