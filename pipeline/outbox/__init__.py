"""The application side of the transactional outbox: write an event in your own transaction.

    import psycopg2
    from pipeline import outbox

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("UPDATE orders SET status = 'PAID' WHERE id = %s", (order_id,))
        event_id = outbox.publish(conn, "order", order_id, "OrderPaid", {"id": order_id})
    # committed together: the order is paid and the event will be published, or neither

:func:`publish` inserts a row into the outbox table (read by the relay, ``capture.source:
outbox``, or routed by the logical source); :func:`emit` writes the event into the WAL only,
as a transactional logical decoding message (the logical source routes it; nothing is stored
in a table, so nothing needs cleaning up). Neither commits: the event becomes visible exactly
when the caller's transaction commits, and vanishes with it if it rolls back.

Write an aggregate's events while holding the aggregate's lock (update its row first, as
above): events of one aggregate are published in the order of ``seq`` (the relay) or of
commit (the logical source), which then agree.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from psycopg2 import sql
from psycopg2.extras import Json

DEFAULT_TABLE = "public.outbox"
DEFAULT_PREFIX = "outbox"


def table_identifier(table: str) -> sql.Identifier:
    """``schema.table`` (or ``table``: in ``public``) as a quoted identifier."""
    schema, _, name = table.rpartition(".")
    return sql.Identifier(schema or "public", name)


def publish(conn: Any, aggregate_type: str, aggregate_id: Any, event_type: str, payload: Any,
            headers: dict[str, Any] | None = None, *, table: str = DEFAULT_TABLE,
            event_id: uuid.UUID | None = None) -> uuid.UUID:
    """Insert one event into the outbox ``table`` in ``conn``'s current transaction (not
    committed here). ``payload`` is anything JSON can hold; ``headers`` become Kafka headers
    next to ``id`` and ``type``. Returns the event id, the ``id`` header consumers drop
    repeats by."""
    event_id = event_id or uuid.uuid4()
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("INSERT INTO {} (id, aggregatetype, aggregateid, type, payload, headers) "
                    "VALUES (%s, %s, %s, %s, %s, %s)").format(table_identifier(table)),
            (str(event_id), aggregate_type, str(aggregate_id), event_type, Json(payload),
             None if headers is None else Json(headers)))
    return event_id


def emit(conn: Any, aggregate_type: str, aggregate_id: Any, event_type: str, payload: Any,
         headers: dict[str, Any] | None = None, *, prefix: str = DEFAULT_PREFIX,
         event_id: uuid.UUID | None = None) -> uuid.UUID:
    """Write one event as a transactional logical decoding message with ``prefix``
    (``outbox.message_prefix``) in ``conn``'s current transaction: decoded only if it commits.
    Needs ``wal_level = logical`` and the logical source with an ``outbox`` section. Returns
    the event id."""
    event_id = event_id or uuid.uuid4()
    content = json.dumps({
        "id": str(event_id), "aggregatetype": aggregate_type,
        "aggregateid": str(aggregate_id), "type": event_type, "payload": payload,
        "headers": headers,
    })
    with conn.cursor() as cur:
        cur.execute("SELECT pg_logical_emit_message(true, %s, %s)", (prefix, content))
    return event_id
