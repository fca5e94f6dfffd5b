"""The outbox table: its DDL (``cdc outbox install``), and failed events (``cdc outbox
failed``, ``cdc outbox retry``).

Columns, Debezium's outbox names first:

    id              uuid, the event id (the ``id`` Kafka header)
    aggregatetype   routes the event to ``outbox.event.<aggregatetype>``
    aggregateid     the Kafka key: one aggregate's events share a partition
    type            the event type (a header)
    payload         jsonb, the record's value
    headers         jsonb, further Kafka headers
    created_at      when the event was written
    status          PENDING, SENT (the relay published it) or FAILED
    retry_count     publish attempts Kafka refused
    last_error      the last refusal, or why the event is FAILED
    next_attempt_at a refused event is not retried before this
    seq             bigserial: the order of an aggregate's events

The logical source needs only the Debezium columns; the rest are the relay's bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg2 import sql

from pipeline.outbox import table_identifier

STATUSES = ("PENDING", "SENT", "FAILED")


def _index_name(table: str, suffix: str) -> sql.Identifier:
    name = table.rpartition(".")[2]
    return sql.Identifier(f"{name[:63 - len(suffix) - 1]}_{suffix}")


def create_table_sql(table: str) -> sql.Composed:
    """The statements creating the outbox ``table`` and its indexes (idempotent)."""
    ident = table_identifier(table)
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {t} ("
        " id uuid PRIMARY KEY,"
        " aggregatetype text NOT NULL,"
        " aggregateid text NOT NULL,"
        " type text NOT NULL,"
        " payload jsonb,"
        " headers jsonb,"
        " created_at timestamptz NOT NULL DEFAULT now(),"
        " status text NOT NULL DEFAULT 'PENDING'"
        "  CHECK (status IN ('PENDING', 'SENT', 'FAILED')),"
        " retry_count integer NOT NULL DEFAULT 0,"
        " last_error text,"
        " next_attempt_at timestamptz,"
        " seq bigserial NOT NULL UNIQUE);\n"
        # The relay's claim: an aggregate's unsent events in order, and pending ones in order.
        "CREATE INDEX IF NOT EXISTS {unsent} ON {t} (aggregatetype, aggregateid, seq)"
        " WHERE status <> 'SENT';\n"
        "CREATE INDEX IF NOT EXISTS {pending} ON {t} (seq) WHERE status = 'PENDING';\n"
        "CREATE INDEX IF NOT EXISTS {failed} ON {t} (seq) WHERE status = 'FAILED';"
    ).format(t=ident, unsent=_index_name(table, "unsent_idx"),
             pending=_index_name(table, "pending_idx"),
             failed=_index_name(table, "failed_idx"))


def install(conn: Any, table: str) -> None:
    """Create the outbox ``table`` (and its schema) if missing, and commit."""
    schema = table.rpartition(".")[0] or "public"
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        cur.execute(create_table_sql(table))
    conn.commit()


@dataclass(frozen=True, slots=True)
class FailedEvent:
    id: str
    aggregate_type: str
    aggregate_id: str
    type: str
    retry_count: int
    last_error: str | None
    created_at: datetime
    held_back: int  # later unsent events of its aggregate


def failed_events(conn: Any, table: str, limit: int = 100) -> list[FailedEvent]:
    """FAILED events, oldest first, with how many later events of their aggregate wait."""
    t = table_identifier(table)
    with conn.cursor() as cur:
        cur.execute(sql.SQL(
            "SELECT f.id::text, f.aggregatetype, f.aggregateid, f.type, f.retry_count,"
            " f.last_error, f.created_at,"
            " (SELECT count(*) FROM {t} l WHERE l.aggregatetype = f.aggregatetype"
            "  AND l.aggregateid = f.aggregateid AND l.seq > f.seq AND l.status = 'PENDING')"
            " FROM {t} f WHERE f.status = 'FAILED' ORDER BY f.seq LIMIT %s").format(t=t),
            (limit,))
        rows = cur.fetchall()
    conn.rollback()
    return [FailedEvent(*row) for row in rows]


def retry_failed(conn: Any, table: str, event_ids: list[str] | None) -> int:
    """Put FAILED events (the given ids, or all when None) back to PENDING with their
    attempts reset; commits; returns how many."""
    t = table_identifier(table)
    query = sql.SQL("UPDATE {} SET status = 'PENDING', retry_count = 0, next_attempt_at = NULL"
                    " WHERE status = 'FAILED'").format(t)
    params: tuple[Any, ...] | None = None
    if event_ids is not None:
        query = query + sql.SQL(" AND id = ANY(%s::uuid[])")
        params = (event_ids,)
    with conn.cursor() as cur:
        cur.execute(query, params)
        count = int(cur.rowcount)
    conn.commit()
    return count


def render_failed(table: str, events: list[FailedEvent]) -> str:
    if not events:
        return f"{table}: no FAILED events"
    lines = [f"{table}: {len(events)} FAILED event(s), oldest first"]
    for e in events:
        held = f", holds back {e.held_back} later event(s)" if e.held_back else ""
        lines.append(f"  {e.id}  {e.aggregate_type}/{e.aggregate_id}  {e.type}  "
                     f"attempts {e.retry_count}{held}  written {e.created_at:%Y-%m-%d %H:%M:%S}")
        lines.append(f"      {e.last_error or '(no error kept)'}")
    return "\n".join(lines)
