"""``cdc snapshot``: ask the running capture for a backfill, and show how it goes.

Requests are signals sent through the WAL (:mod:`pipeline.sources.postgres.signals`), so they
reach capture in order with the stream, survive its restarts, and need no connection to it.
Before sending one, everything that can be checked is checked here, so a mistake gets a clear
error and leaves nothing behind: the table is captured and has a key, the filter is one
PostgreSQL accepts, and no backfill of the table is running. Progress is read from where
capture keeps it (the offsets topic in Kafka).
"""

from __future__ import annotations

from typing import Any

import orjson
import psycopg2
from psycopg2 import sql

from pipeline.capture.backfill_window import check_request, render, running
from pipeline.config import Settings
from pipeline.errors import ConfigError
from pipeline.sources.postgres.backfill import state_store
from pipeline.sources.postgres.signals import SIGNAL_PREFIX, Signal
from pipeline.sources.postgres.slot import connect, translate

__all__ = ["check_start", "load_state", "render", "running", "send"]

_KEY_SQL = (
    "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = %s::regclass "
    "AND (i.indisprimary OR i.indisreplident))"
)


def load_state(settings: Settings) -> dict[str, Any]:
    return state_store(settings.kafka, settings.postgres.slot).load() or {}


def check_start(settings: Settings, tables: tuple[str, ...], where: str | None) -> None:
    """Raise ConfigError naming what is wrong with a backfill request, before it is sent."""
    pg = settings.postgres
    check_request(tables, pg.tables, "postgres.tables", load_state(settings), where)
    conn = connect(pg.dsn.get_secret_value())
    try:
        with conn.cursor() as cur:
            for table in tables:
                _check_table(cur, table, where)
                conn.rollback()
    except psycopg2.Error as exc:
        raise translate(exc, "checking the backfill request") from exc
    finally:
        conn.close()


def _check_table(cur: Any, table: str, where: str | None) -> None:
    schema, name = table.split(".", 1)
    relation = sql.Identifier(schema, name)
    cur.execute("SELECT to_regclass(%s)", (relation.as_string(cur),))
    if cur.fetchone()[0] is None:
        raise ConfigError("cdc snapshot start", f"table {table} does not exist")
    cur.execute(_KEY_SQL, (relation.as_string(cur),))
    if not cur.fetchone()[0]:
        raise ConfigError("cdc snapshot start", f"{table} has no primary key, so it cannot be "
                          "read in key order: add one, or a unique index and REPLICA "
                          "IDENTITY USING INDEX <it>")
    if where:
        cur.execute("SET TRANSACTION READ ONLY")
        try:
            cur.execute(sql.SQL("EXPLAIN SELECT 1 FROM {} WHERE ({})").format(
                relation, sql.SQL(where)))
        except psycopg2.Error as exc:
            message = str(exc).strip().splitlines()[0]
            raise ConfigError("--where", f"PostgreSQL refuses the filter on {table}: "
                              f"{message}") from exc


def send(settings: Settings, signal: Signal) -> str:
    """Write ``signal`` to the WAL (a transactional logical decoding message); its id."""
    body = signal.to_json()
    conn = connect(settings.postgres.dsn.get_secret_value())
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_logical_emit_message(true, %s, %s)",
                        (SIGNAL_PREFIX, body.decode()))
    except psycopg2.Error as exc:
        raise translate(exc, "sending the signal") from exc
    finally:
        conn.close()
    return str(orjson.loads(body)["id"])
