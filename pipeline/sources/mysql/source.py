"""The MySQL/MariaDB binlog as a :class:`~pipeline.capture.source.ChangeSource`.

Capture registers as a replica (``mysql.server_id``) and reads the binlog from where it
last confirmed. That position lives only in Kafka (the offsets topic, as Kafka Connect keeps
Debezium's): a server keeps no per-replica position. It is saved in :meth:`confirm`, which
the capture loop calls once Kafka acknowledged every record before it, so a kill at any
moment resumes with nothing lost; what was published but not confirmed is published again
(at least once; the sinks are idempotent and the records carry the same ``source.lsn``).

On the first start, the current end of the binlog is saved before anything is read: a
crash before the first confirmation must not move the start past changes nobody published.
A saved position the server no longer has (binlog purged) stops capture with the remedy;
it never silently starts somewhere else.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import pymysql

from pipeline.capture.offsets import OffsetStore
from pipeline.capture.source import Item
from pipeline.config import KafkaSettings, MysqlSettings
from pipeline.errors import RetriableError, SourceSetupError
from pipeline.metrics import Metrics
from pipeline.positions import BinlogPosition
from pipeline.sources.mysql import server
from pipeline.sources.mysql.envelope import EnvelopeWriter
from pipeline.sources.mysql.reader import BinlogDecoder, BinlogReader

log = logging.getLogger(__name__)

#: The longest ``read`` waits when the binlog has nothing new.
_IDLE_WAIT_S = 0.05
_RESET = "`cdc capture --reset-position` (after taking a new snapshot of the tables)"


class MysqlBinlogSource:
    """Publishes the row changes of ``mysql.tables`` from the binlog."""

    def __init__(self, settings: MysqlSettings, kafka: KafkaSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.kafka = kafka
        self.metrics = metrics
        self.name = f"{settings.flavor} binlog {settings.host}:{settings.port}"
        self.offsets = OffsetStore(kafka, {"source": "mysql", "server": settings.name,
                                           "server_id": str(settings.server_id)})
        self._reader: BinlogReader | None = None
        self._decoder: BinlogDecoder | None = None

    # -- ChangeSource --------------------------------------------------------------------
    def open(self) -> list[str]:
        s = self.settings
        if s.resume_by == "gtid" and s.flavor != "mariadb":
            raise SourceSetupError("mysql.resume_by gtid follows MariaDB's GTIDs only; use "
                                   "resume_by position with flavor mysql")
        conn = server.connect(s)
        try:
            with conn.cursor() as cur:
                server.check(cur, s.tables)
                start = self._start_position(cur)
        except pymysql.Error as exc:
            raise server.translate(exc, f"checking {self.name}") from exc
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        topics = {t: self.kafka.raw_topic(t) for t in s.tables}
        self._decoder = BinlogDecoder(start, topics, EnvelopeWriter(s.flavor, s.name),
                                      self.kafka.tombstones_on_delete,
                                      track_gtids=s.flavor == "mariadb")
        self._reader = BinlogReader(s, start, self._decoder)
        self._reader.start()
        log.info("%s: reading the binlog from %s (tables %s)", self.name, start,
                 ", ".join(s.tables))
        return list(topics.values())

    def _start_position(self, cur: Any) -> BinlogPosition:
        saved = self.offsets.load()
        if saved is None:
            start = server.current_position(cur, self.settings.flavor)
            self.offsets.save(start.to_dict())
            if self.offsets.flush():
                raise RetriableError("could not save the starting binlog position to Kafka")
            log.info("%s: no saved position, starting at the end of the binlog", self.name)
            return start
        try:
            start = BinlogPosition.from_dict(saved)
        except ValueError as exc:
            raise SourceSetupError(f"the saved position of {self.name} in "
                                   f"'{self.kafka.offsets_topic}' is unreadable ({exc}); "
                                   f"remedy: {_RESET}") from exc
        if self.settings.resume_by == "gtid":
            if not start.gtids:
                raise SourceSetupError(f"the saved position {start} has no GTIDs to resume "
                                       f"by (mysql.resume_by gtid); use resume_by position "
                                       f"or {_RESET}")
            return start
        files = server.binlog_files(cur)
        if start.file not in files:
            raise SourceSetupError(
                f"{self.name} no longer has binlog file {start.file} (the oldest it keeps is "
                f"{files[0] if files else 'none'}): the changes capture has not published "
                f"yet were purged (expire_logs_days / binlog_expire_logs_seconds). Remedy: "
                f"{_RESET}")
        return start

    def read(self, max_items: int) -> list[Item]:
        assert self._reader is not None and self._decoder is not None
        items = self._reader.take(max_items, _IDLE_WAIT_S)
        if self._decoder.counts:
            counts, self._decoder.counts = self._decoder.counts, {}
            for (table, op), n in counts.items():
                self.metrics.inc("cdc_capture_events_total", n, table=table, op=op)
        return items

    def confirm(self, position: BinlogPosition) -> None:
        """Kafka has every record up to ``position``: save it (delivery checked by the
        next save or the flush at close)."""
        self.offsets.save(position.to_dict())

    def keepalive(self) -> None:
        """Nothing to do: the server sends heartbeats and waits for a slow replica."""

    def close(self) -> None:
        if self._reader is not None:
            self._reader.stop()
        self._reader = None
        if self.offsets.flush():
            log.warning("%s: the last confirmed position may not be saved in Kafka; the "
                        "next start publishes again from an earlier one", self.name)

    def forget_positions(self) -> None:
        """Forget the saved binlog position: the next start begins at the binlog's end."""
        self.offsets.forget()
