"""The replication ceiling: how fast the slot alone streams a backlog, in its own process.

``python -m bench.ceiling --dsn D --slot S --publication P --changes N --mode raw|decode|server``
reads the slot with psycopg2's LogicalReplicationConnection (``decode=False``), counts row
changes (pgoutput I/U/D messages) and discards them; ``decode`` also runs our decoder
(``pipeline.sources.postgres.pgoutput.decode_message``) on every message. Feedback every 0.5 s.
Times from the first message to the N-th change; prints one JSON line, with how often the
reader found the socket empty and waited (``waits``).

``server`` has no client in the loop: one ``pg_logical_slot_get_binary_changes`` call decodes
the backlog with pgoutput inside a backend and counts it there. A streaming reader's speed
depends on how it waits: one that drains the socket faster than the walsender fills it wakes
per few messages, and the walsender then sends (and both wake) per message, so the reader
that does less work can measure slower. The server mode is the slot's rate without that.
"""

from __future__ import annotations

import argparse
import json
import select
import sys
import time

from psycopg2.extras import LogicalReplicationConnection

from pipeline.sources.postgres.pgoutput import decode_message
from pipeline.sources.postgres.slot import connect

CHANGE_TAGS = frozenset(b"IUD")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ceiling")
    p.add_argument("--dsn", required=True)
    p.add_argument("--slot", required=True)
    p.add_argument("--publication", required=True)
    p.add_argument("--changes", type=int, required=True)
    p.add_argument("--mode", choices=("raw", "decode", "server"), default="raw")
    p.add_argument("--timeout", type=float, default=900)
    a = p.parse_args(argv)
    if a.mode == "server":
        return _in_server(a)
    conn = connect(a.dsn, connection_factory=LogicalReplicationConnection)
    cur = conn.cursor()
    cur.start_replication(slot_name=a.slot, decode=False,
                          options={"proto_version": "1", "publication_names": a.publication})
    decode = a.mode == "decode"
    changes = messages = waits = 0
    nbytes = 0
    first = None
    last_feedback = time.monotonic()
    deadline = time.monotonic() + a.timeout
    while changes < a.changes and time.monotonic() < deadline:
        msg = cur.read_message()
        if msg is None:
            if first is not None:
                waits += 1
            select.select([cur], [], [], 0.1)
            continue
        if first is None:
            first = time.monotonic()
        payload = msg.payload
        messages += 1
        nbytes += len(payload)
        if payload[0] in CHANGE_TAGS:
            changes += 1
        if decode:
            decode_message(payload)
        if messages % 1024 == 0 and time.monotonic() - last_feedback > 0.5:
            cur.send_feedback(flush_lsn=msg.data_start)
            last_feedback = time.monotonic()
    end = time.monotonic()
    cur.send_feedback(flush_lsn=msg.data_start if messages else 0)
    conn.close()
    secs = end - (first or end)
    print(json.dumps({
        "mode": a.mode, "changes": changes, "messages": messages, "bytes": nbytes,
        "seconds": round(secs, 3), "rows_per_s": round(changes / secs, 1) if secs else None,
        # Times the reader had drained the socket and waited for the server: a reader
        # faster than the walsender waits often, and each wait is a wake-up of both.
        "waits": waits, "messages_per_wait": round(messages / waits, 1) if waits else None,
    }))
    return 0 if changes >= a.changes else 1


def _in_server(a: argparse.Namespace) -> int:
    """Decode the slot's backlog inside PostgreSQL (pgoutput, no client) and count it."""
    conn = connect(a.dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SET statement_timeout = %s", (int(a.timeout * 1000),))
        start = time.monotonic()
        cur.execute(
            "SELECT count(*) FILTER (WHERE get_byte(data, 0) IN (73, 85, 68)), count(*), "
            "coalesce(sum(length(data)), 0) FROM pg_logical_slot_get_binary_changes("
            "%s, NULL, NULL, 'proto_version', '1', 'publication_names', %s)",
            (a.slot, a.publication))
        changes, messages, nbytes = cur.fetchone()
        secs = time.monotonic() - start
    conn.close()
    print(json.dumps({
        "mode": a.mode, "changes": changes, "messages": messages, "bytes": int(nbytes),
        "seconds": round(secs, 3), "rows_per_s": round(changes / secs, 1) if secs else None,
        "waits": 0, "messages_per_wait": None,
    }))
    return 0 if changes >= a.changes else 1


if __name__ == "__main__":
    sys.exit(main())
