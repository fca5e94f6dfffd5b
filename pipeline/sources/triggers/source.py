"""The trigger change log as a :class:`~pipeline.capture.source.ChangeSource` (the relay).

Never skipping a committed change
    Log rows get their sequence number when the trigger runs, not when the transaction
    commits: a transaction that wrote first may commit last, after rows with higher numbers
    were relayed. A relay that remembers "the highest number sent" skips it for good. This
    one uses the visibility horizon instead: ``pg_snapshot_xmin(pg_current_snapshot())`` is
    the oldest transaction still running, so every transaction below it has finished (and
    committed rows of it are visible) and none can add a row any more. The relay works in
    rounds: take the horizon ``h``; relay, in sequence order and in batches, every log row
    whose transaction is in ``[done, h)``; then ``done = h``. A transaction open for long
    holds ``h`` back, and with it every change committed after it started writing: the
    metrics ``cdc_capture_trigger_horizon_lag_seconds`` and
    ``cdc_capture_trigger_rows_waiting``, and ``cdc status``, show it and name the session.

At least once
    Log rows are deleted only in :meth:`TriggerLogSource.confirm`, which the capture loop
    calls once Kafka acknowledged every record up to that checkpoint. The log is the durable
    queue: after a crash the next relay publishes again whatever was not deleted (the sinks
    are idempotent; the records carry the same positions). No position is kept in Kafka.

One relay per log
    A session-level advisory lock on the log: a second ``cdc capture`` waits (retrying) until
    the first one stops, then takes over.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from typing import Any

import orjson
import psycopg2
from psycopg2 import sql

from pipeline.capture.source import Checkpoint, Item
from pipeline.config import KafkaSettings, PostgresSettings, TriggerSettings
from pipeline.errors import RetriableError, SourceSetupError
from pipeline.metrics import Metrics
from pipeline.positions import TriggerLogPosition
from pipeline.sources.postgres.column_watch import ColumnWatch
from pipeline.sources.postgres.envelope import TableShape
from pipeline.sources.postgres.pgoutput import Column, Relation
from pipeline.sources.postgres.slot import connect, primary_key_columns, translate
from pipeline.sources.postgres.types import TypeResolver
from pipeline.sources.postgres.unconverted import UnconvertedValues
from pipeline.sources.triggers import ddl
from pipeline.sources.triggers.rows import LogRowEncoder, parse_row, unknown_columns

log = logging.getLogger(__name__)

#: The columns of a log row as :func:`~pipeline.sources.triggers.rows.parse_row` reads them.
READ_COLUMNS = sql.SQL(
    "id, xid::text, (lsn - '0/0'::pg_lsn)::bigint, op, schema_name, table_name, old::text, "
    "new::text, (extract(epoch FROM captured_at) * 1000000)::bigint")
_HORIZON_SQL = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text"
#: First key of the relay's advisory lock ('CDCT'); the second is the log table's OID.
_LOCK_CLASS = 0x43444354
#: Seconds between measurements of what the horizon holds back.
MEASURE_S = 5.0
#: The longest a ``read`` with nothing to do waits (the loop serves Kafka in between).
_IDLE_WAIT_S = 0.05

_COLUMNS_SQL = (
    "SELECT a.attname, a.atttypid, a.atttypmod FROM pg_attribute a "
    "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum")


class TriggerLogSource:
    """Relays the change log of ``cdc triggers install`` to the raw topics."""

    def __init__(self, pg: PostgresSettings, triggers: TriggerSettings, kafka: KafkaSettings,
                 metrics: Metrics) -> None:
        self.pg = pg
        self.settings = triggers
        self.kafka = kafka
        self.metrics = metrics
        self.log = ddl.TriggerLog.of(triggers)
        self.name = f"trigger log {self.log.name}"
        self.unconverted = UnconvertedValues()
        self._conn: Any = None
        self._reset()

    def _reset(self) -> None:
        self._done = 0  # every log row of a transaction below it was handed out
        self._horizon: int | None = None  # the current round's horizon
        self._after = 0  # the last sequence handed out in this round
        self._pending: deque[tuple[TriggerLogPosition, list[int]]] = deque()
        self._next_look = 0.0
        self._next_measure = 0.0
        self._shapes: dict[str, TableShape] = {}
        self._watch = ColumnWatch()
        self._types = TypeResolver()
        self._counts: dict[tuple[str, str], int] = {}

    # -- ChangeSource --------------------------------------------------------------------
    def open(self) -> list[str]:
        self._reset()
        self._conn = connect(self.pg.dsn.get_secret_value())
        self._conn.autocommit = True
        try:
            with self._conn.cursor() as cur:
                self._check_installed(cur)
                self._lock(cur)
                cur.execute("SELECT current_database()")
                (db,) = cur.fetchone()
                cur.execute(sql.SQL("SELECT DISTINCT schema_name || '.' || table_name "
                                    "FROM {}").format(self.log.relation))
                logged = sorted(r[0] for r in cur.fetchall())
        except psycopg2.Error as exc:
            raise translate(exc, f"opening the change log {self.log.name}") from exc
        self.encoder = LogRowEncoder(self.kafka.topic_prefix, db,
                                     self.kafka.tombstones_on_delete)
        unlisted = [t for t in logged if t not in self.pg.tables]
        if unlisted:
            log.warning("the change log holds changes of tables not in postgres.tables (%s): "
                        "they are published to their raw topics too", ", ".join(unlisted))
        log.info("relaying %s (tables %s)", self.log.name, ", ".join(self.pg.tables))
        return [self.kafka.raw_topic(t) for t in (*self.pg.tables, *unlisted)]

    def _check_installed(self, cur: Any) -> None:
        cur.execute("SELECT to_regclass(%s)", (self.log.relation.as_string(cur),))
        if cur.fetchone()[0] is None:
            raise SourceSetupError(
                f"the change log {self.log.name} does not exist (capture.source is triggers): "
                "run `cdc triggers install` first")
        installed = set(ddl.installed_tables(cur, self.log))
        missing = [t for t in self.pg.tables if t not in installed]
        if missing:
            raise SourceSetupError(
                f"{', '.join(missing)} (postgres.tables) have no capture trigger on "
                f"{self.log.name}: their changes would be missed. Run `cdc triggers install`")

    def _lock(self, cur: Any) -> None:
        cur.execute("SELECT pg_try_advisory_lock(%s, (%s::regclass::oid::bigint "
                    "%% 2147483647)::int)", (_LOCK_CLASS, self.log.relation.as_string(cur)))
        if not cur.fetchone()[0]:
            raise RetriableError(f"another relay holds {self.log.name}; waiting for it to stop")

    def read(self, max_items: int) -> list[Item]:
        try:
            return self._read(max_items)
        except psycopg2.Error as exc:
            raise translate(exc, f"reading the change log {self.log.name}") from exc

    def _read(self, max_items: int) -> list[Item]:
        now = time.monotonic()
        if now >= self._next_measure:
            self._measure()
            self._next_measure = now + MEASURE_S
        if self._horizon is None and not self._start_round(now):
            time.sleep(max(0.0, min(_IDLE_WAIT_S, self._next_look - time.monotonic())))
            return []
        assert self._horizon is not None
        limit = max(1, min(self.settings.batch_size, max_items))
        with self._conn.cursor() as cur:
            cur.execute(sql.SQL(
                "SELECT {} FROM {} WHERE xid >= %s::xid8 AND xid < %s::xid8 AND id > %s "
                "ORDER BY id LIMIT %s").format(READ_COLUMNS, self.log.relation),
                (str(self._done), str(self._horizon), self._after, limit))
            rows = [parse_row(r, orjson.loads) for r in cur.fetchall()]
            out = self._encode(cur, rows)
        if rows:
            self._after = rows[-1].id
            position = TriggerLogPosition(self._horizon, self._after)
            out.append(Checkpoint(position, rows[-1].captured_at_us))
            self._pending.append((position, [r.id for r in rows]))
        if len(rows) < limit:  # the round is complete: everything below its horizon is out
            self._done, self._horizon = self._horizon, None
        self._flush_counts()
        return out

    def _start_round(self, now: float) -> bool:
        """Take a new horizon if it moved past the last round's; False: nothing to do."""
        if now < self._next_look:
            return False
        with self._conn.cursor() as cur:
            cur.execute(_HORIZON_SQL)
            horizon = int(cur.fetchone()[0])
        if horizon <= self._done:
            self._next_look = now + self.settings.poll_interval_s
            return False
        self._horizon, self._after = horizon, 0
        self._forget_changed_shapes()
        return True

    def _forget_changed_shapes(self) -> None:
        """Shapes of tables whose columns changed (``ALTER COLUMN ... TYPE``) are read from
        the catalog again at their next row: their old converters would misread values."""
        if not self._shapes:
            return
        by_oid = {shape.oid: table_id for table_id, shape in self._shapes.items()}
        with self._conn.cursor() as cur:
            for oid in self._watch.changed(cur, by_oid):
                log.info("%s: the columns of %s changed; reading them again", self.name,
                         by_oid[oid])
                del self._shapes[by_oid[oid]]

    def _encode(self, cur: Any, rows: list[Any]) -> list[Item]:
        out: list[Item] = []
        now_ms = int(time.time() * 1000)
        for row in rows:
            shape = self._shape(cur, row.table_id)
            if unknown_columns(shape, row):
                shape = self._shape(cur, row.table_id, refresh=True)
            try:
                out.extend(self.encoder.records(row, shape, self.kafka.raw_topic(row.table_id),
                                                now_ms))
            except ValueError as exc:
                raise SourceSetupError(
                    f"{exc}: the change log holds a row its triggers never write; delete it "
                    f"(DELETE FROM {self.log.name} WHERE id = {row.id})") from exc
            counted = (row.table_id, row.op)
            self._counts[counted] = self._counts.get(counted, 0) + 1
        return out

    def confirm(self, position: TriggerLogPosition) -> None:
        """Kafka has every record up to ``position``: delete those log rows."""
        ids: list[int] = []
        while self._pending and self._pending[0][0] <= position:
            ids.extend(self._pending.popleft()[1])
        if not ids:
            return
        try:
            with self._conn.cursor() as cur:
                cur.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(
                    self.log.relation), (ids,))
        except psycopg2.Error as exc:
            raise translate(exc, f"deleting relayed rows of {self.log.name}") from exc
        self.metrics.inc("cdc_capture_trigger_rows_relayed_total", len(ids))

    def keepalive(self) -> None:
        """Nothing to keep alive: a plain connection has no sender timeout."""

    def close(self) -> None:
        self._flush_counts()
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()  # also releases the advisory lock
        self._conn = None
        self._pending.clear()

    def forget_positions(self) -> None:
        """Nothing is kept in Kafka: the change log itself is the queue."""
        log.info("%s keeps no position in Kafka: nothing to forget", self.name)

    # -- shapes, measurements ------------------------------------------------------------
    def _shape(self, cur: Any, table_id: str, refresh: bool = False) -> TableShape:
        shape = self._shapes.get(table_id)
        if shape is None or refresh:
            shape = self._shapes[table_id] = describe(
                cur, table_id, self._types, self.pg.decimal_handling_mode, self.unconverted,
                self._watch)
        return shape

    def _measure(self) -> None:
        with self._conn.cursor() as cur:
            lag = ddl.horizon_lag(cur, self.log)
        self.metrics.set("cdc_capture_trigger_rows_waiting", lag.rows_waiting)
        self.metrics.set("cdc_capture_trigger_horizon_lag_seconds", lag.oldest_waiting_s)
        if lag.rows_waiting and lag.oldest_waiting_s >= 60:
            log.warning("%s: %s", self.name, ddl.render_lag(lag))

    def _flush_counts(self) -> None:
        for (table, op), n in self._counts.items():
            self.metrics.inc("cdc_capture_events_total", n, table=table, op=op)
        self._counts.clear()
        for type_name, n in self.unconverted.drain().items():
            self.metrics.inc("cdc_capture_unconverted_values_total", n, type=type_name)


def describe(cur: Any, table_id: str, types: TypeResolver, decimal_mode: Any,
             unconverted: UnconvertedValues, watch: ColumnWatch | None = None) -> TableShape:
    """The table's shape from the catalog (the logical source's converters per column). A
    table dropped since its changes were logged has no shape: its values go out as text
    and without a key, so the workers dead-letter them with the reason."""
    schema, name = table_id.split(".", 1)
    cur.execute("SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s", (schema, name))
    found = cur.fetchone()
    if found is None:
        log.warning("%s is gone: its logged changes are published as text, without a key",
                    table_id)
        return TableShape(0, schema, name, (), (), ())
    oid = int(found[0])
    cur.execute(_COLUMNS_SQL, (oid,))
    columns = cur.fetchall()
    if watch is not None:  # the next round compares with what this shape was made of
        watch.remember(oid, columns)
    pk = primary_key_columns(cur, oid)
    rel = Relation(oid, schema, name, "d", tuple(Column(n in pk, n, t, m) for n, t, m in columns))
    resolved = [types.resolve(cur, t) for _, t, _ in columns]
    return TableShape.from_relation(rel, pk, resolved, decimal_mode, unconverted,
                                    schema=schema, table=name)
