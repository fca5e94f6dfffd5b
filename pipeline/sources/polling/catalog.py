"""Each polled table from the catalog: its shape (the logical source's converters) and the
checks that it can be polled as configured, each failing with the setting to change."""

from __future__ import annotations

import logging
from typing import Any

from psycopg2 import sql

from pipeline.config import PollingSettings, PostgresSettings
from pipeline.errors import SourceSetupError
from pipeline.sources.polling.query import PolledTable
from pipeline.sources.postgres.column_watch import ColumnWatch
from pipeline.sources.postgres.envelope import TableShape
from pipeline.sources.postgres.pgoutput import Column, Relation
from pipeline.sources.postgres.slot import primary_key_columns
from pipeline.sources.postgres.types import PgType, TypeResolver
from pipeline.sources.postgres.unconverted import UnconvertedValues
from pipeline.sources.postgres.values import BOOL_OID, TIMESTAMP_OID, TIMESTAMPTZ_OID

log = logging.getLogger(__name__)

_RELATION_SQL = (
    "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')"
)
_COLUMNS_SQL = (
    "SELECT attname, atttypid, atttypmod FROM pg_attribute "
    "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
)
#: Is there an index whose first column is the timestamp column?
_INDEXED_SQL = (
    "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a "
    "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
    "WHERE i.indrelid = %s AND a.attname = %s)"
)


def describe(cur: Any, table_id: str, pg: PostgresSettings, polling: PollingSettings,
             types: TypeResolver, unconverted: UnconvertedValues,
             watch: ColumnWatch | None = None) -> tuple[PolledTable, TableShape]:
    """``table_id`` as polling reads it. Raises SourceSetupError naming the setting when the
    table, its primary key or a configured column is missing or of the wrong type.
    ``watch``: told the columns described."""
    schema, name = table_id.split(".", 1)
    cur.execute(_RELATION_SQL, (schema, name))
    row = cur.fetchone()
    if row is None:
        raise SourceSetupError(f"postgres.tables names '{table_id}', which does not exist "
                               "(or is not a table)")
    oid = int(row[0])
    cur.execute(_COLUMNS_SQL, (oid,))
    columns = [(n, int(t), int(m)) for n, t, m in cur.fetchall()]
    key = primary_key_columns(cur, oid)
    if not key:
        raise SourceSetupError(
            f"table '{table_id}' has no primary key: polling orders rows sharing a timestamp "
            "by it and keys every record with it. Add a primary key, or capture the table "
            "with another capture.source")
    resolved = {n: types.resolve(cur, t) for n, t, _m in columns}
    ts_column, created, soft_delete = polling.columns(table_id)
    where = (f"polling.tables.{table_id}" if table_id in polling.tables else "polling")
    ts_type = _column(resolved, ts_column, table_id, f"{where}.timestamp_column")
    if not (ts_type.kind == "builtin" and ts_type.oid in (TIMESTAMPTZ_OID, TIMESTAMP_OID)):
        raise SourceSetupError(
            f"{where}.timestamp_column: column '{ts_column}' of '{table_id}' is of type "
            f"{ts_type.name}; polling needs a timestamptz or timestamp column that every "
            "write sets to the time of the change")
    if created is not None:
        _column(resolved, created, table_id, f"{where}.created_column")
    flag = False
    if soft_delete is not None:
        kind = _column(resolved, soft_delete, table_id, f"{where}.soft_delete_column")
        flag = kind.kind == "builtin" and kind.oid == BOOL_OID
    cur.execute(_INDEXED_SQL, (oid, ts_column))
    if not cur.fetchone()[0]:
        advice = sql.SQL("CREATE INDEX ON {} ({})").format(
            sql.Identifier(schema, name),
            sql.SQL(", ").join(sql.Identifier(c) for c in (ts_column, *key))).as_string(cur)
        log.warning("table %s has no index starting with %s: every poll scans the whole "
                    "table. %s", table_id, ts_column, advice)
    polled = PolledTable(schema, name, tuple(n for n, _t, _m in columns), key, ts_column,
                         ts_type.oid == TIMESTAMPTZ_OID, created, soft_delete, flag)
    rel = Relation(oid, schema, name, "d", tuple(Column(n in key, n, t, m)
                                                 for n, t, m in columns))
    shape = TableShape.from_relation(rel, key, [resolved[n] for n, _t, _m in columns],
                                     pg.decimal_handling_mode, unconverted)
    if watch is not None:
        watch.remember(oid, columns)
    return polled, shape


def _column(resolved: dict[str, PgType], column: str, table_id: str, setting: str) -> PgType:
    found = resolved.get(column)
    if found is None:
        raise SourceSetupError(
            f"{setting}: table '{table_id}' has no column '{column}' (it has "
            f"{', '.join(resolved)})")
    return found
