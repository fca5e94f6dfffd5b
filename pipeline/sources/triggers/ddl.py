"""The change log and its triggers: ``cdc triggers install | uninstall | status``.

``install`` creates, in ``triggers.log_schema`` (created when missing):

* the change-log table ``triggers.log_table``: one row per row change (``op`` c/u/d) or
  truncate (``t``), with the writer's top-level transaction id (``xid8``), the WAL insert
  position when the change was recorded (``lsn``: the change's position for the workers),
  the table, the old and new row, and the time it was recorded;
* one plpgsql trigger function that writes it. Rows are stored as JSON objects of column
  name -> the column type's *text output* (``hstore(NEW)``), read with the session settings
  the logical source pins (UTC, ISO dates, exact floats, hex bytea), so the relay converts
  them with the logical source's own converters and publishes the same values. It runs as
  its owner (``SECURITY DEFINER``, fixed ``search_path``): writers need no right on the log;
* per configured table, a row-level ``AFTER INSERT OR UPDATE OR DELETE`` trigger and a
  statement-level ``AFTER TRUNCATE`` trigger (on a partitioned table they fire for every
  partition and name the listed root table).

Everything is idempotent (``IF NOT EXISTS``, ``CREATE OR REPLACE``, triggers dropped and
created again in the same transaction), and ``install`` also removes its triggers from
tables no longer listed. ``uninstall`` drops the triggers, the function, the log table and,
when ``install`` created them, the ``hstore`` extension and the schema (if empty). Every
identifier is composed with :mod:`psycopg2.sql`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.errors
from psycopg2 import sql

from pipeline.config import Settings, TriggerSettings
from pipeline.errors import SourceSetupError
from pipeline.sources.postgres.slot import connect, translate

#: ``xid8`` and ``pg_current_xact_id()`` (the visibility horizon in 64 bits) came in 13.
MIN_SERVER_VERSION = 130000
#: The session settings the logical source decodes with (``source.SESSION``), pinned on the
#: trigger function so the text a writer's session would print cannot vary.
_PINNED = (("TimeZone", "UTC"), ("DateStyle", "ISO"), ("IntervalStyle", "iso_8601"),
           ("extra_float_digits", "3"), ("bytea_output", "hex"))


@dataclass(frozen=True, slots=True)
class TriggerLog:
    """The names of the change log's objects, from ``triggers`` settings."""

    schema: str
    table: str

    @classmethod
    def of(cls, settings: TriggerSettings) -> TriggerLog:
        return cls(settings.log_schema, settings.log_table)

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def relation(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)

    @property
    def function(self) -> sql.Identifier:
        return sql.Identifier(self.schema, f"{self.table}_capture")

    @property
    def row_trigger(self) -> str:
        return f"{self.schema}__{self.table}__row"

    @property
    def truncate_trigger(self) -> str:
        return f"{self.schema}__{self.table}__truncate"


@dataclass(frozen=True, slots=True)
class Blocker:
    """The session whose open transaction holds the visibility horizon (when visible)."""

    pid: int
    state: str | None
    transaction_age_s: float | None
    application: str | None

    def __str__(self) -> str:
        age = ("" if self.transaction_age_s is None
               else f" for {self.transaction_age_s:.0f}s")
        app = f" ({self.application})" if self.application else ""
        return f"pid {self.pid}{app}, {self.state or 'state hidden'}{age}"


@dataclass(frozen=True, slots=True)
class HorizonLag:
    """Committed changes the relay cannot take yet: their transaction is at or past the
    horizon because an older transaction is still open."""

    rows_waiting: int
    oldest_waiting_s: float
    blocker: Blocker | None


@dataclass(frozen=True, slots=True)
class LogStatus:
    """What ``cdc triggers status`` shows."""

    installed: bool
    tables: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    rows: int = 0
    lag: HorizonLag | None = None

    def render(self, log: TriggerLog) -> str:
        if not self.installed:
            return f"trigger log {log.name}: not installed (run `cdc triggers install`)"
        lines = [f"trigger log {log.name}: {self.rows} rows not yet relayed"]
        lines.append(f"triggers on: {', '.join(self.tables) or 'no table'}")
        if self.missing:
            lines.append(f"listed but without triggers: {', '.join(self.missing)} "
                         "(run `cdc triggers install`)")
        if self.lag is not None:
            lines.append(render_lag(self.lag))
        return "\n".join(lines)


def render_lag(lag: HorizonLag) -> str:
    if not lag.rows_waiting:
        return "visibility horizon: no committed change waiting"
    held = f", held by {lag.blocker}" if lag.blocker is not None else ""
    return (f"visibility horizon: {lag.rows_waiting} committed changes waiting behind an "
            f"open transaction, oldest {lag.oldest_waiting_s:.0f}s{held}")


@dataclass(slots=True)
class InstallReport:
    tables: list[str] = field(default_factory=list)
    removed_from: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    def render(self, log: TriggerLog) -> str:
        lines = [f"trigger log {log.name}: capturing {', '.join(self.tables)}"]
        if self.created:
            lines.append(f"created: {', '.join(self.created)}")
        if self.removed_from:
            lines.append(f"triggers removed from tables no longer listed: "
                         f"{', '.join(self.removed_from)}")
        return "\n".join(lines)


# -- install -------------------------------------------------------------------------------

def install(settings: Settings) -> InstallReport:
    """Create (or bring up to date) the log, the function and the triggers, in one
    transaction. Raises SourceSetupError naming the table and the remedy."""
    log = TriggerLog.of(settings.triggers)
    conn = connect(settings.postgres.dsn.get_secret_value())
    try:
        with conn, conn.cursor() as cur:
            report = _install(cur, log, settings.postgres.tables)
    except psycopg2.Error as exc:
        raise translate(exc, f"installing the change log {log.name}") from exc
    finally:
        conn.close()
    return report


def _install(cur: Any, log: TriggerLog, tables: tuple[str, ...]) -> InstallReport:
    cur.execute("SHOW server_version_num")
    if int(cur.fetchone()[0]) < MIN_SERVER_VERSION:
        raise SourceSetupError("trigger-based capture needs PostgreSQL 13 or later "
                               "(pg_current_xact_id and xid8)")
    check_tables(cur, tables)
    report = InstallReport(tables=list(tables))
    meta = _metadata(cur, log)
    cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (log.schema,))
    if cur.fetchone() is None:
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(log.schema)))
        meta["created_schema"] = True
        report.created.append(f"schema {log.schema}")
    hstore = hstore_schema(cur)
    if hstore is None:
        cur.execute(sql.SQL("CREATE EXTENSION hstore SCHEMA {}").format(
            sql.Identifier(log.schema)))
        meta["created_hstore"] = True
        hstore = log.schema
        report.created.append(f"extension hstore (in {log.schema})")
    cur.execute("SELECT to_regclass(%s)", (sql.Identifier(log.schema, log.table).as_string(cur),))
    if cur.fetchone()[0] is None:
        report.created.append(f"table {log.name}")
    cur.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ("
        " id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " xid xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),"
        " lsn pg_lsn NOT NULL DEFAULT pg_catalog.pg_current_wal_insert_lsn(),"
        " op \"char\" NOT NULL,"
        " schema_name text NOT NULL,"
        " table_name text NOT NULL,"
        " old jsonb,"
        " new jsonb,"
        " captured_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp())"
    ).format(log.relation))
    cur.execute(sql.SQL("COMMENT ON TABLE {} IS %s").format(log.relation),
                (json.dumps({"created_by": "cdc triggers install", **meta}),))
    cur.execute(_function_sql(log, hstore))
    for table in tables:
        schema, name = table.split(".", 1)
        target = sql.Identifier(schema, name)
        args = sql.SQL("{}, {}").format(sql.Literal(schema), sql.Literal(name))
        for trigger in (log.row_trigger, log.truncate_trigger):
            cur.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                sql.Identifier(trigger), target))
        cur.execute(sql.SQL(
            "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} "
            "FOR EACH ROW EXECUTE FUNCTION {}({})").format(
            sql.Identifier(log.row_trigger), target, log.function, args))
        cur.execute(sql.SQL(
            "CREATE TRIGGER {} AFTER TRUNCATE ON {} "
            "FOR EACH STATEMENT EXECUTE FUNCTION {}({})").format(
            sql.Identifier(log.truncate_trigger), target, log.function, args))
    listed = set(tables)
    for table in installed_tables(cur, log):
        if table not in listed:
            _drop_triggers(cur, log, table)
            report.removed_from.append(table)
    return report


def _function_sql(log: TriggerLog, hstore: str) -> sql.Composed:
    """``CREATE OR REPLACE FUNCTION``; the body is composed (the log table's name, the
    hstore functions' schema) and then passed as one string literal."""
    body = sql.SQL("""
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    INSERT INTO {log} (op, schema_name, table_name) VALUES ('t', TG_ARGV[0], TG_ARGV[1]);
  ELSIF TG_OP = 'INSERT' THEN
    INSERT INTO {log} (op, schema_name, table_name, new)
    VALUES ('c', TG_ARGV[0], TG_ARGV[1], {new});
  ELSIF TG_OP = 'UPDATE' THEN
    INSERT INTO {log} (op, schema_name, table_name, old, new)
    VALUES ('u', TG_ARGV[0], TG_ARGV[1], {old}, {new});
  ELSE
    INSERT INTO {log} (op, schema_name, table_name, old)
    VALUES ('d', TG_ARGV[0], TG_ARGV[1], {old});
  END IF;
  RETURN NULL;
END
""").format(log=log.relation, new=_row_json(hstore, "NEW"), old=_row_json(hstore, "OLD"))
    settings = sql.SQL(" ").join(
        sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
        for name, value in _PINNED)
    # A SECURITY DEFINER function must not resolve names through the caller's path.
    settings += sql.SQL(" SET search_path = {}, {}").format(sql.Identifier("pg_catalog"),
                                                           sql.Identifier("pg_temp"))
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql "
        "SECURITY DEFINER {} AS {}").format(log.function, settings, _AsLiteral(body))


def _row_json(hstore: str, record: str) -> sql.Composed:
    """``hstore_to_jsonb(hstore(NEW))``: column name -> its type's text output, with the
    hstore functions qualified (the function's search_path holds only pg_catalog)."""
    return sql.SQL("{}({}({}))").format(sql.Identifier(hstore, "hstore_to_jsonb"),
                                        sql.Identifier(hstore, "hstore"), sql.SQL(record))


class _AsLiteral(sql.Composable):
    """A composed SQL text passed as a string literal (a function body): its identifiers
    are quoted by the driver first, then the whole text is quoted as one literal."""

    def __init__(self, body: sql.Composable) -> None:
        super().__init__(body)
        self._body = body

    def as_string(self, context: Any) -> str:
        return sql.Literal(self._body.as_string(context)).as_string(context)


def check_tables(cur: Any, tables: tuple[str, ...]) -> None:
    """Every listed table exists, is a table, and has a primary key (its changes are keyed
    by it); else a SourceSetupError naming the table and the remedy."""
    for table in tables:
        schema, name = table.split(".", 1)
        cur.execute("SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                    (schema, name))
        row = cur.fetchone()
        if row is None:
            raise SourceSetupError(
                f"table {table} (postgres.tables) does not exist: create it or remove it from "
                "postgres.tables")
        if row[1] not in ("r", "p"):
            raise SourceSetupError(f"{table} (postgres.tables) is not a table (relkind "
                                   f"'{row[1]}'): triggers capture tables only")
        cur.execute("SELECT 1 FROM pg_index WHERE indrelid = %s AND indisprimary", (row[0],))
        if cur.fetchone() is None:
            raise SourceSetupError(
                f"table {table} has no primary key: trigger-based capture keys every change "
                f"by it. Remedy: ALTER TABLE {table} ADD PRIMARY KEY (...), or remove it from "
                "postgres.tables")


def hstore_schema(cur: Any) -> str | None:
    cur.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                "ON n.oid = e.extnamespace WHERE e.extname = 'hstore'")
    row = cur.fetchone()
    return None if row is None else str(row[0])


def _metadata(cur: Any, log: TriggerLog) -> dict[str, Any]:
    """What an earlier install recorded (in the log table's comment): what it created."""
    cur.execute("SELECT obj_description(to_regclass(%s), 'pg_class')",
                (log.relation.as_string(cur),))
    row = cur.fetchone()
    try:
        found = json.loads(row[0]) if row and row[0] else {}
    except ValueError:
        found = {}
    return {k: bool(found.get(k)) for k in ("created_schema", "created_hstore")}


def installed_tables(cur: Any, log: TriggerLog) -> list[str]:
    """``schema.table`` of every table carrying this log's row trigger (partitions' cloned
    triggers excluded: they follow their root)."""
    cur.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_trigger t "
        "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE t.tgname = %s AND t.tgparentid = 0 "
        "AND t.tgfoid = to_regprocedure(%s || '()') ORDER BY 1",
        (log.row_trigger, log.function.as_string(cur)))
    return [r[0] for r in cur.fetchall()]


def _drop_triggers(cur: Any, log: TriggerLog, table: str) -> None:
    schema, name = table.split(".", 1)
    for trigger in (log.row_trigger, log.truncate_trigger):
        cur.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
            sql.Identifier(trigger), sql.Identifier(schema, name)))


# -- uninstall -----------------------------------------------------------------------------

@dataclass(slots=True)
class UninstallReport:
    dropped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"dropped: {', '.join(self.dropped) or 'nothing (not installed)'}"]
        lines += [f"kept: {k}" for k in self.kept]
        return "\n".join(lines)


def unrelayed_rows(settings: Settings) -> int | None:
    """Rows in the log not yet relayed (lost by an uninstall); None if there is no log."""
    log = TriggerLog.of(settings.triggers)
    conn = connect(settings.postgres.dsn.get_secret_value())
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (log.relation.as_string(cur),))
            if cur.fetchone()[0] is None:
                return None
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(log.relation))
            return int(cur.fetchone()[0])
    except psycopg2.Error as exc:
        raise translate(exc, f"reading the change log {log.name}") from exc
    finally:
        conn.close()


def uninstall(settings: Settings) -> UninstallReport:
    """Drop everything ``install`` made, in one transaction (unrelayed log rows are lost)."""
    log = TriggerLog.of(settings.triggers)
    conn = connect(settings.postgres.dsn.get_secret_value())
    try:
        with conn, conn.cursor() as cur:
            return _uninstall(cur, log)
    except psycopg2.Error as exc:
        raise translate(exc, f"uninstalling the change log {log.name}") from exc
    finally:
        conn.close()


def _uninstall(cur: Any, log: TriggerLog) -> UninstallReport:
    report = UninstallReport()
    meta = _metadata(cur, log)
    cur.execute("SELECT to_regprocedure(%s || '()')", (log.function.as_string(cur),))
    if cur.fetchone()[0] is not None:
        for table in installed_tables(cur, log):
            _drop_triggers(cur, log, table)
            report.dropped.append(f"triggers on {table}")
        cur.execute(sql.SQL("DROP FUNCTION {}()").format(log.function))
        report.dropped.append(f"function {log.function.as_string(cur)}")
    cur.execute("SELECT to_regclass(%s)", (log.relation.as_string(cur),))
    if cur.fetchone()[0] is not None:
        cur.execute(sql.SQL("DROP TABLE {}").format(log.relation))
        report.dropped.append(f"table {log.name}")
    if meta["created_hstore"]:
        cur.execute("SAVEPOINT hstore")
        try:
            cur.execute("DROP EXTENSION IF EXISTS hstore")
            report.dropped.append("extension hstore")
        except psycopg2.errors.DependentObjectsStillExist:
            cur.execute("ROLLBACK TO SAVEPOINT hstore")
            report.kept.append("extension hstore (other objects use it now)")
    if meta["created_schema"]:
        cur.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE n.nspname = %s", (log.schema,))
        others = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM pg_proc p JOIN pg_namespace n "
                    "ON n.oid = p.pronamespace WHERE n.nspname = %s", (log.schema,))
        others += cur.fetchone()[0]
        if others:
            report.kept.append(f"schema {log.schema} (holds other objects)")
        else:
            cur.execute(sql.SQL("DROP SCHEMA {}").format(sql.Identifier(log.schema)))
            report.dropped.append(f"schema {log.schema}")
    return report


# -- status --------------------------------------------------------------------------------

#: Committed log rows at or past the horizon, and the age of the oldest.
_WAITING_SQL = sql.SQL(
    "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(captured_at)), 0) "
    "FROM {} WHERE xid >= pg_snapshot_xmin(pg_current_snapshot())")
#: The session whose transaction is the horizon (visible to roles that may see it).
_BLOCKER_SQL = (
    "SELECT pid, state, extract(epoch FROM clock_timestamp() - xact_start), "
    "application_name FROM pg_stat_activity "
    "WHERE backend_xid = xid(pg_snapshot_xmin(pg_current_snapshot())) LIMIT 1")


def horizon_lag(cur: Any, log: TriggerLog) -> HorizonLag:
    cur.execute(_WAITING_SQL.format(log.relation))
    rows, oldest = cur.fetchone()
    blocker = None
    if rows:
        cur.execute(_BLOCKER_SQL)
        found = cur.fetchone()
        if found is not None:
            blocker = Blocker(int(found[0]), found[1],
                              None if found[2] is None else float(found[2]), found[3] or None)
    return HorizonLag(int(rows), float(oldest), blocker)


def status(settings: Settings) -> LogStatus:
    log = TriggerLog.of(settings.triggers)
    conn = connect(settings.postgres.dsn.get_secret_value())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (log.relation.as_string(cur),))
            if cur.fetchone()[0] is None:
                return LogStatus(installed=False)
            tables = installed_tables(cur, log)
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(log.relation))
            rows = int(cur.fetchone()[0])
            lag = horizon_lag(cur, log)
    except psycopg2.Error as exc:
        raise translate(exc, f"reading the change log {log.name}") from exc
    finally:
        conn.close()
    missing = tuple(t for t in settings.postgres.tables if t not in tables)
    return LogStatus(True, tuple(tables), missing, rows, lag)
