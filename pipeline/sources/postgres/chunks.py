"""Reading one table in primary-key chunks (keyset pagination, never OFFSET).

Shared by the initial snapshot and by incremental backfills. Values are read as the text
each type's output function prints, exactly as pgoutput sends them, and converted by the
same :class:`~pipeline.sources.postgres.envelope.TableShape` the stream uses: a row read here
and the same row streamed produce the same event values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg2.extensions
from psycopg2 import sql

from pipeline.config import PostgresSettings
from pipeline.errors import SourceSetupError
from pipeline.sources.postgres.envelope import TableShape
from pipeline.sources.postgres.pgoutput import Column, Relation
from pipeline.sources.postgres.slot import primary_key_columns
from pipeline.sources.postgres.sql_ascii import replaced_values
from pipeline.sources.postgres.types import PgType, TypeResolver
from pipeline.sources.postgres.unconverted import UnconvertedValues

_COLUMNS_SQL = (
    "SELECT a.attname, a.atttypid, a.atttypmod FROM pg_attribute a "
    "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped "
    "ORDER BY a.attnum"
)

#: A chunk's key as read: the key columns' text values, in key order.
ChunkKey = list[str | None]


class TableReader:
    """One table's shape and its keyset chunks, on a connection opened with the decoding
    session's settings (``SESSION``: UTC, ISO dates, exact floats, hex bytea)."""

    def __init__(self, conn: Any, table: str, pg: PostgresSettings, types: TypeResolver,
                 unconverted: UnconvertedValues, where: str | None = None) -> None:
        self.conn = conn
        self.table = table
        self.where = where
        self.unconverted = unconverted
        schema, name = table.split(".", 1)
        with conn.cursor() as cur:
            self.shape, self.types, columns = _describe(cur, schema, name, pg, types,
                                                        unconverted)
        #: Each column's type modifier (``atttypmod``).
        self.typmods = [typmod for _name, _oid, typmod in columns]
        # Every column as the text its type's output function prints, as pgoutput sends it;
        # only on this reader's cursors: the connection's other queries keep their types
        # (a bool read as 't' is truthy, a json plan stays text). A domain's values arrive
        # as its base type's (the row description names the base type), so both count.
        oids = {oid for _name, oid, _typmod in columns} | {t.oid for t in self.types}
        self._raw = psycopg2.extensions.new_type(tuple(oids), "CDC_RAW_TEXT",
                                                 lambda value, _cur: value)
        key_at = self.shape.names.index
        self._key_index = [key_at(k) for k in self.shape.key_names]

    def chunk(self, after: ChunkKey | None, size: int,
              upto: ChunkKey | None = None) -> list[tuple[str | None, ...]]:
        """Up to ``size`` rows with a key above ``after`` (all from the start when None) and
        at most ``upto`` (no bound when None), in key order, each as the text of its
        columns."""
        columns = sql.SQL(", ").join(sql.Identifier(n) for n in self.shape.names)
        return self._select(columns, after, upto, sql.SQL(" LIMIT {}").format(
            sql.Literal(size)), self.shape.names, self._key_index)

    def boundary(self, after: ChunkKey | None, size: int) -> tuple[ChunkKey | None, bool]:
        """Where the chunk of ``size`` rows after ``after`` ends, read from the key alone (an
        index-only scan): ``(its last key, False)`` when more rows follow it, ``(its last
        key, True)`` when it ends the table exactly, ``(None, True)`` when fewer than
        ``size`` rows are left (the chunk runs to the end)."""
        key = sql.SQL(", ").join(sql.Identifier(k) for k in self.shape.key_names)
        keys = self.shape.key_names
        found = self._select(key, after, None, sql.SQL(" OFFSET {} LIMIT 2").format(
            sql.Literal(size - 1)), keys, range(len(keys)))
        if not found:
            return None, True
        return list(found[0]), len(found) == 1

    def _select(self, columns: sql.Composable, after: ChunkKey | None, upto: ChunkKey | None,
                tail: sql.Composable, names: Sequence[str], key_at: Sequence[int]
                ) -> list[tuple[str | None, ...]]:
        """The rows of ``columns`` (named ``names``, the key at ``key_at``) in key order."""
        schema, name = self.table.split(".", 1)
        key = sql.SQL(", ").join(sql.Identifier(k) for k in self.shape.key_names)
        marks = sql.SQL(", ").join(sql.Placeholder() * len(self.shape.key_names))
        query = sql.SQL("SELECT {} FROM {}").format(columns, sql.Identifier(schema, name))
        conditions: list[sql.Composable] = []
        params: list[Any] = []
        if after is not None:
            conditions.append(sql.SQL("({}) > ({})").format(key, marks))
            params.extend(after)
        if upto is not None:
            conditions.append(sql.SQL("({}) <= ({})").format(key, marks))
            params.extend(upto)
        if self.where:
            # A filter is SQL by nature (Debezium's additional-conditions); it runs in a
            # read-only transaction, and `cdc snapshot start` checks it with EXPLAIN first.
            conditions.append(sql.SQL("({})").format(sql.SQL(self.where)))
        if conditions:
            query += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions)
        query += sql.SQL(" ORDER BY {}").format(key) + tail
        with replaced_values() as texts, self.cursor() as cur:
            cur.execute(query, params)
            rows: list[tuple[str | None, ...]] = cur.fetchall()  # as they are: tuples
        self._replaced(rows, texts, names, key_at)
        return rows

    def _replaced(self, rows: list[tuple[str | None, ...]], texts: list[str], names: Sequence[str],
                  key_at: Sequence[int]) -> None:
        """Count the values of ``rows`` (columns ``names``) a ``SQL_ASCII`` database held
        bytes that are not UTF-8 in (read with U+FFFD in their place, :mod:`.sql_ascii`). A
        key holding one is refused: it could not be given back to PostgreSQL exactly as the
        bound a next read starts after, and a read bounded by it could skip rows."""
        if not texts:
            return
        replaced = {id(text) for text in texts}  # ``texts`` keeps them alive: ids unique
        if any(id(values[i]) in replaced for values in rows for i in key_at):
            raise SourceSetupError(
                f"{self.table}: a key value holds bytes that are not UTF-8 (the database is "
                "SQL_ASCII), so the table cannot be read in key chunks (snapshots, backfills, "
                "cdc verify): fix those key values. Its changes are streamed, with U+FFFD in "
                "place of such bytes; postgres.snapshot_mode: never skips its snapshot")
        columns = {names[i] for values in rows for i, value in enumerate(values)
                   if id(value) in replaced}
        self.unconverted.replaced(self.table, sorted(columns), len(texts))

    def cursor(self) -> Any:
        """A cursor on the reader's connection that reads this table's columns as text."""
        cur = self.conn.cursor()
        psycopg2.extensions.register_type(self._raw, cur)
        return cur

    def key_of(self, values: Sequence[str | None]) -> ChunkKey:
        """The key (text values) of a row ``chunk`` returned: where the next chunk starts."""
        return [values[i] for i in self._key_index]


def _describe(cur: Any, schema: str, name: str, pg: PostgresSettings, types: TypeResolver,
              unconverted: UnconvertedValues
              ) -> tuple[TableShape, list[PgType], list[tuple[str, int, int]]]:
    """The table's shape from the catalog, its values read as PostgreSQL's text; each
    column's type, and its name, type OID and type modifier."""
    relation = sql.Identifier(schema, name).as_string(cur)
    with replaced_values() as texts:
        cur.execute(_COLUMNS_SQL, (relation,))
        columns = cur.fetchall()
    replaced = {id(text) for text in texts}
    for column, _oid, _typmod in columns:
        if id(column) in replaced:
            raise SourceSetupError(
                f"{schema}.{name}: the name of column {column!r} holds bytes that are not "
                "UTF-8 (the database is SQL_ASCII), so it cannot be named in a query "
                "(snapshots, backfills, cdc verify): rename it (ALTER TABLE ... RENAME "
                "COLUMN). Its changes are streamed, the name with U+FFFD in place of such "
                "bytes; postgres.snapshot_mode: never skips its snapshot")
    cur.execute("SELECT %s::regclass::oid", (relation,))
    (oid,) = cur.fetchone()
    pk = primary_key_columns(cur, oid) or _replica_identity_columns(cur, oid)
    if not pk:
        raise SourceSetupError(
            f"{schema}.{name} has no primary key, so it cannot be read in key order: add one, "
            f"or a unique index and REPLICA IDENTITY USING INDEX <it>")
    rel = Relation(oid, schema, name, "d",
                   tuple(Column(n in pk, n, t, m) for n, t, m in columns))
    resolved = [types.resolve(cur, c[1]) for c in columns]
    shape = TableShape.from_relation(rel, pk, resolved, pg.decimal_handling_mode,
                                     unconverted, schema=schema, table=name,
                                     columns=pg.columns.get(f"{schema}.{name}"))
    return shape, resolved, [tuple(c) for c in columns]


def _replica_identity_columns(cur: Any, oid: int) -> tuple[str, ...]:
    """The columns of the table's REPLICA IDENTITY USING INDEX index (its key when it has
    no primary key: the stream keys its events by them too)."""
    cur.execute(
        "SELECT a.attname FROM pg_index i "
        "JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indrelid = %s AND i.indisreplident ORDER BY k.ord", (oid,))
    return tuple(r[0] for r in cur.fetchall())
