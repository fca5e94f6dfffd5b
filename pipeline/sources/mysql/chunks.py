"""Reading one table in primary-key chunks for the snapshot (keyset pagination, never
OFFSET: each chunk starts with an index range after the last key read, so a chunk costs
the same at the end of a large table as at its start).

MySQL has no composable SQL like psycopg2's ``sql`` module: identifiers (which come from
``mysql.tables`` and ``information_schema``) go through :func:`quote`, and every value is a
``%s`` parameter escaped by pymysql.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pipeline.errors import SourceSetupError
from pipeline.sources.mysql.envelope import TableImage
from pipeline.sources.mysql.values import READ_AS_DOUBLE, read_converter

_COLUMNS_SQL = (
    "SELECT COLUMN_NAME, DATA_TYPE, DATETIME_PRECISION, NUMERIC_PRECISION, IS_NULLABLE "
    "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
    "ORDER BY ORDINAL_POSITION")
_KEY_SQL = (
    "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE "
    "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND CONSTRAINT_NAME = 'PRIMARY' "
    "ORDER BY ORDINAL_POSITION")

#: Key types whose order is a number's, not their values' as strings.
NUMBERED_KEYS = frozenset({"enum", "set", "bit"})

#: A key as saved in the snapshot's progress: JSON values (see :func:`encode_key`).
SavedKey = list[Any]


def quote(name: str) -> str:
    """``name`` as a MySQL identifier: in backticks, a backtick inside doubled. The server
    takes any other character literally there; NUL it refuses, so do we."""
    if "\x00" in name or not name:
        raise ValueError(f"not a usable identifier: {name!r}")
    return "`" + name.replace("`", "``") + "`"


def keyset_condition(key_sql: list[str]) -> str:
    """``WHERE`` text for "key after (%s, ...)" in key order, with one ``%s`` per use of a
    value (:func:`keyset_params` lists them). Spelled out rather than as a row comparison
    ``(a, b) > (%s, %s)``: MariaDB 10.11 scans the whole index for that (EXPLAIN: type
    ``index``), but uses a range on the leading ``a >= %s``."""
    if len(key_sql) == 1:
        return f"{key_sql[0]} > %s"
    alternatives = []
    for i, column in enumerate(key_sql):
        equal = [f"{c} = %s" for c in key_sql[:i]]
        alternatives.append("(" + " AND ".join([*equal, f"{column} > %s"]) + ")")
    return f"{key_sql[0]} >= %s AND (" + " OR ".join(alternatives) + ")"


def keyset_params(after: list[Any]) -> list[Any]:
    """The parameters of :func:`keyset_condition` for the key values ``after``."""
    if len(after) == 1:
        return list(after)
    params = [after[0]]
    for i in range(len(after)):
        params.extend(after[: i + 1])
    return params


def encode_key(values: list[Any]) -> SavedKey:
    """Key values as pymysql read them -> JSON for the offsets topic, so a resumed snapshot
    hands the server back exactly the values it compared (a DECIMAL as a decimal, never a
    float; bytes as bytes)."""
    out: list[Any] = []
    for value in values:
        if value is None or isinstance(value, (int, str, float)):
            out.append(value)
        elif isinstance(value, (bytes, bytearray)):
            out.append({"b64": base64.b64encode(value).decode()})
        elif isinstance(value, Decimal):
            out.append({"decimal": str(value)})
        elif isinstance(value, dt.datetime):
            out.append({"datetime": value.isoformat()})
        elif isinstance(value, dt.date):
            out.append({"date": value.isoformat()})
        elif isinstance(value, dt.timedelta):
            out.append({"time_us": value // dt.timedelta(microseconds=1)})
        else:
            raise ValueError(f"a primary-key value of type {type(value).__name__} cannot "
                             "be saved as snapshot progress")
    return out


def decode_key(saved: SavedKey) -> list[Any]:
    """The inverse of :func:`encode_key`; ValueError for anything else."""
    out: list[Any] = []
    for value in saved:
        if not isinstance(value, dict):
            out.append(value)
        elif "b64" in value:
            out.append(base64.b64decode(value["b64"]))
        elif "decimal" in value:
            out.append(Decimal(value["decimal"]))
        elif "datetime" in value:
            out.append(dt.datetime.fromisoformat(value["datetime"]))
        elif "date" in value:
            out.append(dt.date.fromisoformat(value["date"]))
        elif "time_us" in value:
            out.append(dt.timedelta(microseconds=int(value["time_us"])))
        else:
            raise ValueError(f"not a saved key value: {value!r}")
    return out


@dataclass(frozen=True, slots=True)
class ChunkQuery:
    """The two statements of one table's chunks: the first, and every one after a key."""

    first: str
    after: str


class TableReader:
    """One table's columns (as of the snapshot's transaction) and its keyset chunks."""

    def __init__(self, cur: Any, table: str, where: str | None = None) -> None:
        """``where``: a condition on the rows (a backfill's additional-conditions, SQL
        text as the user wrote it)."""
        self.table = table
        self.where = where
        db, name = table.split(".", 1)
        cur.execute(_COLUMNS_SQL, (db, name))
        columns = cur.fetchall()
        cur.execute(_KEY_SQL, (db, name))
        key_names = tuple(str(r[0]) for r in cur.fetchall())
        if not columns:
            raise SourceSetupError(f"table {table} (mysql.tables) does not exist or the "
                                   "capture user cannot see it (GRANT SELECT)")
        if not key_names:
            raise SourceSetupError(f"table {table} has no primary key: it cannot be read in "
                                   "key order. Add one or remove it from mysql.tables")
        self.names = [str(c[0]) for c in columns]
        converters = {str(n): read_converter(str(t).lower(), int(fsp or 0), int(width or 0),
                                             str(nullable) == "YES")
                      for n, t, fsp, width, nullable in columns}
        self.image = TableImage(db, name, converters, key_names)
        selected = [f"CAST({quote(n)} AS DOUBLE)" if str(t).lower() in READ_AS_DOUBLE
                    else quote(n) for n, t, *_ in columns]
        # An ENUM, SET or BIT key sorts by its number (ENUM's index, SET's and BIT's bits),
        # but compares with a string as a string (or, for BIT, not at all): its bound is
        # that number, read as one more column after the row's.
        types = {str(n): str(t).lower() for n, t, *_ in columns}
        self._key_index = []
        for k in key_names:
            if types[k] in NUMBERED_KEYS:
                self._key_index.append(len(selected))
                selected.append(f"{quote(k)} + 0")
            else:
                self._key_index.append(self.names.index(k))
        key_sql = [quote(k) for k in key_names]
        head = f"SELECT {', '.join(selected)} FROM {quote(db)}.{quote(name)}"
        tail = f" ORDER BY {', '.join(key_sql)} LIMIT %s"
        only = f" AND ({where.replace('%', '%%')})" if where else ""
        self.query = ChunkQuery(head + (f" WHERE ({where.replace('%', '%%')})" if where
                                        else "") + tail,
                                f"{head} WHERE {keyset_condition(key_sql)}{only}{tail}")

    def chunk(self, cur: Any, after: list[Any] | None, size: int) -> list[tuple[Any, ...]]:
        """Up to ``size`` rows with a key above ``after`` (from the start when None), in
        key order, as pymysql reads them."""
        if after is None:
            cur.execute(self.query.first, (size,))
        else:
            cur.execute(self.query.after, (*keyset_params(after), size))
        return list(cur.fetchall())

    def key_of(self, values: tuple[Any, ...]) -> list[Any]:
        """The key of a row ``chunk`` returned: where the next chunk starts."""
        return [values[i] for i in self._key_index]

    def row(self, values: tuple[Any, ...]) -> dict[str, Any]:
        """A row ``chunk`` returned as the binlog's rows are converted."""
        return self.image.row(dict(zip(self.names, values[:len(self.names)], strict=True)),
                              {})
