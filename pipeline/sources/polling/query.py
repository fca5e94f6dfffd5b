"""The SQL polling runs, composed with psycopg2.sql (pure: no connection needed).

One poll of a table reads the rows after its watermark, in watermark order::

    SELECT <every column as its output text> FROM <table>
    WHERE (<ts>, <pk...>) > (%s, %s...)          -- omitted before the first row
      AND <ts> <= <bound>
    ORDER BY <ts>, <pk...> LIMIT <batch>

The row comparison makes the watermark a keyset: rows sharing a timestamp are ordered by
their key, so a batch that ends among them resumes at the next one and none is skipped. An
index on ``(<ts>, <pk...>)`` serves it.

The bound is taken once per polling cycle, *before* the polls' snapshots (each statement of
the autocommit connection has its own), from :func:`bound_query`:

* ``lag``: ``now() - safety_lag``;
* ``horizon``: also never past the start of the oldest transaction open in the database.
  A transaction's ``now()`` is its start, so a row such a transaction writes (with ``now()``
  or any later server time) has a timestamp at or after that start; every transaction that
  starts later has a later ``now()``. So once the bound is below every open transaction's
  start, no row at or below it can still appear: the polls that follow see them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg2 import sql

from pipeline.positions import Watermark


@dataclass(frozen=True, slots=True)
class PolledTable:
    """What polling needs to know of one table (read from the catalog at start)."""

    schema: str
    name: str
    #: Every column, in table order (the ``SELECT`` list, each read as text).
    columns: tuple[str, ...]
    key: tuple[str, ...]
    timestamp: str
    #: The timestamp column is ``timestamptz`` (else ``timestamp`` without time zone).
    zoned: bool
    created: str | None = None
    soft_delete: str | None = None
    #: The soft-delete column is a ``boolean`` (true: deleted), else not NULL: deleted.
    soft_delete_is_flag: bool = False

    @property
    def table_id(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def order(self) -> tuple[str, ...]:
        """The watermark's columns: the timestamp, then the primary key."""
        return (self.timestamp, *self.key)

    def position_of(self, column: str) -> int:
        return self.columns.index(column)


_ALIAS = "polled"


def poll_query(table: PolledTable, after: Watermark | None, bound: str, time_zone: str,
               limit: int) -> tuple[sql.Composed, list[Any]]:
    """The next batch of ``table`` after ``after`` (None: from the first row), up to the
    cycle's ``bound`` (a ``timestamptz`` as text); ``time_zone``: the zone a ``timestamp``
    column is written in. Returns the statement and its parameters."""
    # Every column is qualified: the text output columns keep their names, and an ORDER BY
    # of a bare name would sort by the text (10 before 9).
    ts = sql.Identifier(_ALIAS, table.timestamp)
    order = sql.SQL(", ").join([ts, *(sql.Identifier(_ALIAS, k) for k in table.key)])
    # Each value as its type's output function prints it (what pgoutput sends and the
    # converters read): concat() calls it, where a cast to text may not (boolean 'true'
    # for 't', inet with its mask length, char(n) without its padding). num_nulls: a
    # composite of NULL fields is not NULL (``IS NULL`` would say it is).
    query = sql.SQL("SELECT {} FROM {} AS {} WHERE ").format(
        sql.SQL(", ").join(sql.SQL("CASE WHEN num_nulls({c}) = 0 THEN concat({c}) END").format(
            c=sql.Identifier(_ALIAS, c)) for c in table.columns),
        sql.Identifier(table.schema, table.name), sql.Identifier(_ALIAS))
    params: list[Any] = []
    if after is not None:
        marks = sql.SQL(", ").join(sql.Placeholder() * (1 + len(table.key)))
        query += sql.SQL("({}) > ({}) AND ").format(order, marks)
        params += [after.ts, *after.key]
    if table.zoned:
        query += sql.SQL("{} <= %s::timestamptz").format(ts)
        params.append(bound)
    else:
        query += sql.SQL("{} <= (%s::timestamptz AT TIME ZONE %s)").format(ts)
        params += [bound, time_zone]
    query += sql.SQL(" ORDER BY {} LIMIT {}").format(order, sql.Literal(limit))
    return query, params


#: Sessions whose open transaction could still write a captured row: clients and extension
#: workers (pg_cron) of this database; not autovacuum, walsenders or the poller itself.
_OLDEST_OPEN = (
    "SELECT min(xact_start) - interval '1 microsecond' FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
    "AND xact_start IS NOT NULL AND backend_type IN ('client backend', 'background worker')"
)


def bound_query(mode: str) -> sql.Composed:
    """``(bound, seconds it is behind now(), prepared transactions)`` for one cycle; one
    parameter: the safety lag in seconds. A prepared (two-phase) transaction has no start
    time to hold the bound at: the caller waits while one exists (``horizon`` only)."""
    lagged = sql.SQL("now() - make_interval(secs => %s)")
    bound: sql.Composable
    prepared: sql.Composable
    if mode == "horizon":
        bound = sql.SQL("LEAST({}, ({}))").format(lagged, sql.SQL(_OLDEST_OPEN))
        prepared = sql.SQL("(SELECT count(*) FROM pg_prepared_xacts "
                           "WHERE database = current_database())")
    else:
        bound, prepared = lagged, sql.SQL("0")
    return sql.SQL("SELECT b::text, extract(epoch FROM now() - b)::float8, {} "
                   "FROM (SELECT {} AS b) AS bound").format(prepared, bound)


def unseen_query(table: PolledTable) -> sql.Composed:
    """``(rows whose timestamp is NULL, rows whose timestamp is in the future)``: the first
    are never polled, the second only once their time comes (a writer's clock ahead)."""
    ts = sql.Identifier(table.timestamp)
    relation = sql.Identifier(table.schema, table.name)
    now = sql.SQL("now()") if table.zoned else sql.SQL("(now() AT TIME ZONE %s)")
    return sql.SQL("SELECT (SELECT count(*) FROM {0} WHERE {1} IS NULL), "
                   "(SELECT count(*) FROM {0} WHERE {1} > {2})").format(relation, ts, now)
