"""Query-based polling as a :class:`~pipeline.capture.source.ChangeSource`.

Every ``polling.interval_s`` a cycle starts: the bound is taken (:func:`bound_query`), then
each table is read batch by batch after its watermark ``(timestamp, primary key)`` up to that
bound, until a batch comes back short. Each batch ends with a checkpoint carrying every
table's watermark; the capture loop confirms it once Kafka acknowledged the batch and all
before it, and only then is it saved to Kafka (the offsets topic, as Kafka Connect keeps
offsets). A poller killed at any point restarts at the last saved watermark and publishes
again what came after it (at least once; the sinks are idempotent).

Records are the logical source's envelope (``connector: postgresql``), values converted
by the same :class:`~pipeline.sources.postgres.envelope.TableShape` from PostgreSQL's text.
Their position (``source.lsn``, and so the search index's external version) is the row's
timestamp in microseconds (:func:`~pipeline.positions.timestamp_version`): it grows with
the watermark, for each row in the order polling reads its changes. What polling cannot see
(hard deletes, intermediate states, late commits) is in the README's "Query-based polling".
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from typing import Any

import psycopg2

from pipeline.capture.offsets import OffsetStore
from pipeline.capture.source import ANY_PARTITION, Checkpoint, Item
from pipeline.config import KafkaSettings, PollingSettings, PostgresSettings
from pipeline.errors import RetriableError, SourceSetupError
from pipeline.events import ChangeEvent, SourceInfo, encode_key, encode_value
from pipeline.metrics import Metrics
from pipeline.positions import UNIX_EPOCH_VERSION, PollPosition, Watermark, timestamp_version
from pipeline.sources.polling.catalog import describe
from pipeline.sources.polling.query import PolledTable, bound_query, poll_query, unseen_query
from pipeline.sources.polling.status import position_identity
from pipeline.sources.postgres.column_watch import ColumnWatch
from pipeline.sources.postgres.envelope import TableShape
from pipeline.sources.postgres.slot import connect, translate
from pipeline.sources.postgres.source import SESSION
from pipeline.sources.postgres.types import TypeResolver
from pipeline.sources.postgres.unconverted import UnconvertedValues

log = logging.getLogger(__name__)

#: Seconds between saves of the confirmed watermarks to the offsets topic.
SAVE_EVERY_S = 1.0
#: Seconds between counts of the rows polling cannot see (NULL or future timestamps), and
#: between readings of the tables' columns from the catalog.
UNSEEN_EVERY_S = 300.0
#: SQLSTATE of a column the poll names that no longer exists.
UNDEFINED_COLUMN = "42703"
#: Seconds between warnings that a prepared transaction holds polling back.
HELD_WARNING_EVERY_S = 60.0

_HORIZON_RIGHTS_SQL = (
    "SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER') "
    "FROM pg_roles WHERE rolname = current_user"
)


class PollingSource:
    """The tables of ``postgres.tables``, polled by their watermarks."""

    def __init__(self, pg: PostgresSettings, polling: PollingSettings, kafka: KafkaSettings,
                 metrics: Metrics) -> None:
        self.pg = pg
        self.polling = polling
        self.kafka = kafka
        self.metrics = metrics
        self.name = f"polling {', '.join(pg.tables)}"
        self.offsets = OffsetStore(kafka, position_identity(kafka.topic_prefix))
        self.unconverted = UnconvertedValues()
        self._types = TypeResolver()
        #: Outlives sessions: a new session never hands out a lower position.
        self._batches = 0
        self._confirmed: PollPosition | None = None
        self._saved: PollPosition | None = None
        self._conn: Any = None
        self._reset_session()

    def _reset_session(self) -> None:
        self._tables: dict[str, tuple[PolledTable, TableShape]] = {}
        self._watch = ColumnWatch()
        self._watermarks: dict[str, Watermark] = {}
        self._due: deque[str] = deque()
        self._bound = ""
        self._next_cycle = 0.0
        self._next_unseen = 0.0
        self._next_held_warning = 0.0
        self._last_saved = 0.0

    # -- ChangeSource --------------------------------------------------------------------
    def open(self) -> list[str]:
        self._reset_session()
        start = self._start_position()
        if start is not None:
            self._batches = max(self._batches, start.batches)
            self._watermarks = dict(start.watermarks)
        self._conn = connect(self.pg.dsn.get_secret_value(), options=SESSION)
        self._conn.autocommit = True
        try:
            with self._conn.cursor() as cur:
                cur.execute("SELECT current_database()")
                (self._db,) = cur.fetchone()
                self._check_server(cur)
            self._describe_tables()
        except psycopg2.Error as exc:
            raise translate(exc, "checking the tables to poll") from exc
        for table_id, (table, _shape) in self._tables.items():
            mark = self._watermarks.get(table_id)
            if mark is not None and mark.columns != table.order:
                log.warning("%s: the saved watermark is of (%s), the table is now polled by "
                            "(%s): polling it from its first row again", table_id,
                            ", ".join(mark.columns), ", ".join(table.order))
                del self._watermarks[table_id]
                mark = None
            log.info("polling %s by (%s, %s) after %s", table_id, table.timestamp,
                     ", ".join(table.key), mark.ts if mark is not None else "its first row")
        return [self.kafka.raw_topic(t) for t in self.pg.tables]

    def read(self, max_items: int) -> list[Item]:
        try:
            if not self._due and not self._start_cycle():
                return []
            table_id = self._due.popleft()
            return self._poll(table_id)
        except psycopg2.Error as exc:
            if getattr(exc, "pgcode", None) == UNDEFINED_COLUMN:
                # A column was dropped since the catalog was read: a new session reads it
                # again (and stops, naming the setting, if it was a configured column).
                raise RetriableError(f"a polled table changed: {exc}".strip()) from exc
            raise translate(exc, "polling") from exc

    def confirm(self, position: PollPosition) -> None:
        self._confirmed = position
        self._save(force=False)

    def keepalive(self) -> None:
        """Nothing to do: a plain connection is not dropped while capture waits for Kafka."""

    def close(self) -> None:
        self._save(force=True)
        self.offsets.flush()
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
        self._conn = None

    def forget_positions(self) -> None:
        self.offsets.forget()

    # -- positions -----------------------------------------------------------------------
    def _start_position(self) -> PollPosition | None:
        """The last confirmed watermarks: this process's own (after a reconnect) or, if
        newer or the only ones, those saved in Kafka."""
        saved = self.offsets.load()
        kept = None
        if saved is not None:
            try:
                kept = PollPosition.decode(saved)
            except ValueError as exc:
                raise SourceSetupError(
                    f"the polling position kept in '{self.kafka.offsets_topic}' is unreadable "
                    f"({exc}): run `cdc capture --reset-position` to poll every table from "
                    "its first row") from exc
        mine = self._confirmed
        if mine is not None and (kept is None or mine.batches >= kept.batches):
            return mine
        return kept

    def _save(self, force: bool) -> None:
        """Save the confirmed watermarks (never any other), at most once a second."""
        confirmed = self._confirmed
        if confirmed is None or confirmed is self._saved:
            return
        now = time.monotonic()
        if force or now - self._last_saved >= SAVE_EVERY_S:
            self.offsets.save(confirmed.encode())
            self._saved = confirmed
            self._last_saved = now

    # -- polling -------------------------------------------------------------------------
    def _check_server(self, cur: Any) -> None:
        if self.polling.mode == "horizon":
            cur.execute("SELECT pg_is_in_recovery()")
            if cur.fetchone()[0]:
                raise SourceSetupError(
                    "polling.mode horizon cannot work on a standby: the transactions that "
                    "write the rows run on the primary, where this server cannot see them. "
                    "Poll the primary, or set polling.mode: lag with a safety_lag_s that "
                    "covers the standby's replay lag")
            cur.execute(_HORIZON_RIGHTS_SQL)
            row = cur.fetchone()
            if not (row and row[0]):
                raise SourceSetupError(
                    "polling.mode horizon reads every session's transaction start in "
                    "pg_stat_activity, which this role cannot see: GRANT pg_read_all_stats "
                    "TO <the capture role>, or set polling.mode: lag")
        try:
            cur.execute("SELECT now() AT TIME ZONE %s", (self.polling.time_zone,))
        except psycopg2.DataError as exc:
            raise SourceSetupError(
                f"polling.time_zone '{self.polling.time_zone}' is not a time zone PostgreSQL "
                "knows (e.g. UTC, Europe/Paris)") from exc

    def _describe_tables(self) -> None:
        """Read every table's columns, key and types (again: columns added since are
        published from now on)."""
        with self._conn.cursor() as cur:
            for table_id in self.pg.tables:
                self._tables[table_id] = describe(cur, table_id, self.pg, self.polling,
                                                  self._types, self.unconverted, self._watch)

    def _describe_changed(self, cur: Any) -> None:
        """Tables whose columns changed (``ALTER COLUMN ... TYPE``) are described again
        before they are polled: their old converters would misread values."""
        by_oid = {shape.oid: table_id for table_id, (_t, shape) in self._tables.items()}
        for oid in self._watch.changed(cur, by_oid):
            table_id = by_oid[oid]
            log.info("%s: the columns of %s changed; reading them again", self.name, table_id)
            self._tables[table_id] = describe(cur, table_id, self.pg, self.polling,
                                              self._types, self.unconverted, self._watch)

    def _start_cycle(self) -> bool:
        """Begin the next cycle when it is due: take the bound, queue every table."""
        self._save(force=False)  # the last confirmation of a burst, once idle
        now = time.monotonic()
        if now < self._next_cycle:
            time.sleep(min(0.05, self._next_cycle - now))
            return False
        self._next_cycle = now + self.polling.interval_s
        if now >= self._next_unseen:
            if self._next_unseen:  # not the session's first cycle: open() just read them
                self._describe_tables()
            self._next_unseen = now + UNSEEN_EVERY_S
            self._report_unseen()
        with self._conn.cursor() as cur:
            self._describe_changed(cur)
            cur.execute(bound_query(self.polling.mode), (self.polling.safety_lag_s,))
            bound, behind_s, prepared = cur.fetchone()
        if prepared:
            self.metrics.set("cdc_polling_prepared_transactions", int(prepared))
            if now >= self._next_held_warning:
                self._next_held_warning = now + HELD_WARNING_EVERY_S
                log.warning("%d prepared transaction(s) in the database hold polling back: "
                            "their start time is unknown, so their rows could be older than "
                            "any bound (COMMIT PREPARED or ROLLBACK PREPARED them)", prepared)
            return False
        self.metrics.set("cdc_polling_prepared_transactions", 0)
        self.metrics.set("cdc_polling_bound_lag_seconds", float(behind_s))
        # Caught up: what is published is as old as the bound (a backlog: see _poll).
        self.metrics.set("cdc_replication_lag_seconds", float(behind_s))
        self._bound = bound
        self._due.extend(self._tables)
        return True

    def _poll(self, table_id: str) -> list[Item]:
        table, shape = self._tables[table_id]
        size = self.polling.batch_size
        query, params = poll_query(table, self._watermarks.get(table_id), self._bound,
                                   self.polling.time_zone, size)
        with self._conn.cursor() as cur:
            cur.execute(query, params)
            rows = cur.fetchall()
        if len(rows) == size:  # more may be waiting below the bound: this table again
            self._due.appendleft(table_id)
        if not rows:
            return []
        out: list[Item] = []
        counts: dict[str, int] = {}
        for values in rows:
            op = self._append(out, table, shape, values)
            counts[op] = counts.get(op, 0) + 1
        for op, n in counts.items():
            self.metrics.inc("cdc_capture_events_total", n, table=table_id, op=op)
        for type_name, n in self.unconverted.drain().items():
            self.metrics.inc("cdc_capture_unconverted_values_total", n, type=type_name)
        last = rows[-1]
        mark = Watermark(table.order, last[table.position_of(table.timestamp)],
                         tuple(last[table.position_of(k)] for k in table.key))
        self._watermarks[table_id] = mark
        self._batches += 1
        commit_us = max(0, mark.version - UNIX_EPOCH_VERSION) if table.zoned else 0
        if commit_us and len(rows) == size:  # a backlog: as old as the last row read
            self.metrics.set("cdc_replication_lag_seconds",
                             max(0.0, time.time() - commit_us / 1e6))
        out.append(Checkpoint(PollPosition(self._batches, dict(self._watermarks)), commit_us))
        return out

    def _append(self, out: list[Item], table: PolledTable, shape: TableShape,
                values: tuple[str | None, ...]) -> str:
        """One row's record(s); returns its op."""
        row = shape.row(values)
        ts_text = values[table.position_of(table.timestamp)]
        assert ts_text is not None  # the query's bound excludes NULL
        version = timestamp_version(ts_text)
        source = SourceInfo(
            connector="postgresql", name=self.kafka.topic_prefix, db=self._db,
            schema=table.schema, table=table.name,
            ts_us=max(0, version - UNIX_EPOCH_VERSION), lsn=version)
        topic = self.kafka.raw_topic(table.table_id)
        now_ms = int(time.time() * 1000)
        if _deleted(table, values, row):
            event = ChangeEvent("d", shape.key(row), row, None, source, now_ms)
            key = encode_key(event)
            out.append((topic, key, encode_value(event), ANY_PARTITION))
            if self.kafka.tombstones_on_delete:
                out.append((topic, key, None, ANY_PARTITION))
            return "d"
        created = table.created is not None and \
            values[table.position_of(table.created)] == ts_text
        event = ChangeEvent("c" if created else "u", shape.key(row), None, row, source, now_ms)
        out.append((topic, encode_key(event), encode_value(event), ANY_PARTITION))
        return event.op

    def _report_unseen(self) -> None:
        """Count the rows no poll will publish (NULL timestamp) or not yet (future)."""
        for table_id, (table, _shape) in self._tables.items():
            params = () if table.zoned else (self.polling.time_zone,)
            try:
                with self._conn.cursor() as cur:
                    cur.execute(unseen_query(table), params)
                    nulls, future = cur.fetchone()
            except psycopg2.Error as exc:
                error = translate(exc, f"counting unpolled rows of {table_id}")
                if isinstance(error, RetriableError):
                    raise error from exc
                log.warning("%s", error)
                continue
            self.metrics.set("cdc_polling_rows_never_seen", int(nulls), table=table_id)
            self.metrics.set("cdc_polling_rows_in_future", int(future), table=table_id)
            if nulls:
                log.warning("%s: %d rows have %s NULL and are never polled: give the column "
                            "a value (e.g. UPDATE ... SET %s = now() WHERE %s IS NULL) and a "
                            "DEFAULT now()", table_id, nulls, table.timestamp, table.timestamp,
                            table.timestamp)
            if future:
                log.warning("%s: %d rows have %s in the future; they are polled only once "
                            "that time comes (a writer's clock ahead of the server's?)",
                            table_id, future, table.timestamp)


def _deleted(table: PolledTable, values: tuple[str | None, ...], row: dict[str, Any]) -> bool:
    if table.soft_delete is None:
        return False
    if table.soft_delete_is_flag:
        return row.get(table.soft_delete) is True
    return values[table.position_of(table.soft_delete)] is not None
