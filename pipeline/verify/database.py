"""The database side of ``cdc verify``: a table's rows in primary-key chunks, converted as
capture publishes them (:class:`~pipeline.sources.postgres.chunks.TableReader`), and rows
looked up by key. Every read is its own short statement on an autocommit connection: no
long transaction holds back vacuum, no lock is taken beyond a plain SELECT's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg2
from psycopg2 import sql

from pipeline.config import PostgresSettings
from pipeline.sinks.search import document_id
from pipeline.sources.postgres.chunks import ChunkKey, TableReader
from pipeline.sources.postgres.slot import connect, translate
from pipeline.sources.postgres.source import SESSION
from pipeline.sources.postgres.types import TypeResolver
from pipeline.sources.postgres.unconverted import UnconvertedValues
from pipeline.verify.compare import DbRow
from pipeline.verify.keys import DocumentKeys

#: document id -> (key, row as published, key as PostgreSQL prints it)
Rows = dict[str, DbRow]


def key_filter(key_names: Sequence[str], keys: Sequence[Sequence[Any]]) -> sql.Composed:
    """A condition selecting exactly ``keys`` (values in ``key_names`` order): values as
    literals (PostgreSQL casts each to its column's type), names as identifiers."""
    if len(key_names) == 1:
        column = sql.Identifier(key_names[0])
        values = sql.SQL(", ").join(sql.Literal(k[0]) for k in keys)
        return sql.SQL("{} IN ({})").format(column, values)
    return sql.SQL(" OR ").join(
        sql.SQL("({})").format(sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(sql.Identifier(name), sql.Literal(value))
            for name, value in zip(key_names, key, strict=True)))
        for key in keys)


class TableRows:
    """One captured table, read for verifying."""

    def __init__(self, pg: PostgresSettings, table: str) -> None:
        self.table = table
        try:
            self.conn = connect(pg.dsn.get_secret_value(), text_as_stored=True, options=SESSION)
            self.conn.autocommit = True
            self.reader = TableReader(self.conn, table, pg, TypeResolver(),
                                      UnconvertedValues())
        except psycopg2.Error as exc:
            raise translate(exc, f"reading {table}") from exc
        self.shape = self.reader.shape
        self.key_names = self.shape.key_names
        self.keys = DocumentKeys(self.shape, self.reader.types, self.reader.typmods,
                                 pg.decimal_handling_mode)

    def close(self) -> None:
        self.conn.close()

    def estimate(self) -> int:
        """The planner's row count (no scan)."""
        schema, name = self.table.split(".", 1)
        with self.conn.cursor() as cur:
            cur.execute("SELECT greatest(reltuples, 0)::bigint FROM pg_class "
                        "WHERE oid = %s::regclass",
                        (sql.Identifier(schema, name).as_string(self.conn),))
            return int(cur.fetchone()[0])

    def chunk(self, after: ChunkKey | None, size: int) -> tuple[Rows, ChunkKey | None]:
        """The next ``size`` rows in key order, and where the following chunk starts (None
        at the end)."""
        try:
            raw = self.reader.chunk(after, size)
        except psycopg2.Error as exc:
            raise translate(exc, f"reading {self.table}") from exc
        rows = self._rows(raw)
        return rows, (self.reader.key_of(raw[-1]) if len(raw) == size else None)

    def by_keys(self, keys: Sequence[Sequence[Any]]) -> Rows:
        """The rows with these keys (PostgreSQL's text of each key column, in key order)."""
        if not keys:
            return {}
        try:
            return self._by_keys(keys)
        except psycopg2.DataError:
            # a value its column cannot take (a document's key of another type): no row
            # has it; the others are looked up without it
            if len(keys) == 1:
                return {}
            half = len(keys) // 2
            return {**self.by_keys(keys[:half]), **self.by_keys(keys[half:])}

    def _by_keys(self, keys: Sequence[Sequence[Any]]) -> Rows:
        schema, name = self.table.split(".", 1)
        query = sql.SQL("SELECT {} FROM {} WHERE {}").format(
            sql.SQL(", ").join(sql.Identifier(n) for n in self.shape.names),
            sql.Identifier(schema, name), key_filter(self.key_names, keys))
        try:
            with self.reader.cursor() as cur:
                cur.execute(query)
                raw = cur.fetchall()
        except psycopg2.DataError:
            raise
        except psycopg2.Error as exc:
            raise translate(exc, f"looking up keys of {self.table}") from exc
        return self._rows(raw)

    def _rows(self, raw: list[tuple[str | None, ...]]) -> Rows:
        out: Rows = {}
        for values in raw:
            row = self.shape.row(tuple(values))
            key = self.shape.key(row)
            out[document_id(key)] = (key, row, tuple(self.reader.key_of(values)))
        return out
