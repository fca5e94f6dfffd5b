"""``cdc snapshot`` for a binlog capture (``capture.source: mysql``): a request is a row
inserted into ``mysql.signal_table`` (Debezium's signal table), so it reaches capture through
the binlog, in order with the stream. What can be checked first is checked here, so a mistake
gets a clear error and leaves no row behind: the table is captured, exists and has a primary
key, the condition is one the server accepts, and no backfill of it is running. Progress is
read from the offsets topic, where capture keeps it.
"""

from __future__ import annotations

from typing import Any

import orjson
import pymysql

from pipeline.capture.backfill_window import check_request, render, running
from pipeline.capture.signals import Signal
from pipeline.config import Settings
from pipeline.errors import ConfigError
from pipeline.sources.mysql import server
from pipeline.sources.mysql.backfill import insert_signal_sql, state_store
from pipeline.sources.mysql.chunks import quote

__all__ = ["check_start", "load_state", "render", "running", "send"]

_KEY_SQL = ("SELECT COUNT(*) FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = %s "
            "AND TABLE_NAME = %s AND CONSTRAINT_NAME = 'PRIMARY'")
_EXISTS_SQL = ("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND "
               "TABLE_NAME = %s")


def _signal_table(settings: Settings) -> str:
    table = settings.mysql.signal_table
    if table is None:
        raise ConfigError("mysql.signal_table", "a binlog capture takes backfill requests "
                          "through its signal table: create it (see README, MariaDB "
                          "incremental backfills), set mysql.signal_table and restart capture")
    return table


def load_state(settings: Settings) -> dict[str, Any]:
    return state_store(settings.kafka, settings.mysql).load() or {}


def check_start(settings: Settings, tables: tuple[str, ...], where: str | None) -> None:
    """Raise ConfigError naming what is wrong with a backfill request, before it is sent."""
    my = settings.mysql
    _signal_table(settings)
    check_request(tables, my.tables, "mysql.tables", load_state(settings), where)
    conn = server.connect(my)
    try:
        with conn.cursor() as cur:
            for table in tables:
                _check_table(cur, table, where)
    except pymysql.Error as exc:
        raise server.translate(exc, "checking the backfill request") from exc
    finally:
        conn.close()


def _check_table(cur: Any, table: str, where: str | None) -> None:
    db, name = table.split(".", 1)
    cur.execute(_EXISTS_SQL, (db, name))
    if not cur.fetchone()[0]:
        raise ConfigError("cdc snapshot start", f"table {table} does not exist")
    cur.execute(_KEY_SQL, (db, name))
    if not cur.fetchone()[0]:
        raise ConfigError("cdc snapshot start", f"{table} has no primary key, so it cannot be "
                          "read in key order: add one")
    if where:
        try:
            cur.execute(f"EXPLAIN SELECT 1 FROM {quote(db)}.{quote(name)} WHERE "
                        f"({where.replace('%', '%%')})")
            cur.fetchall()
        except pymysql.Error as exc:
            if not server.refused_statement(exc):
                raise
            raise ConfigError("--where", f"the server refuses the filter on {table}: "
                              f"{exc.args[-1]}") from exc


def send(settings: Settings, signal: Signal) -> str:
    """Insert ``signal`` into mysql.signal_table; its id."""
    table = _signal_table(settings)
    body = orjson.loads(signal.to_json())
    conn = server.connect(settings.mysql)
    try:
        with conn.cursor() as cur:
            cur.execute(insert_signal_sql(table), (body["id"], body["type"],
                                                   orjson.dumps(body["data"]).decode()))
    except pymysql.Error as exc:
        raise server.translate(exc, f"inserting the signal into {table}") from exc
    finally:
        conn.close()
    return str(body["id"])
