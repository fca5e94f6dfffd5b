"""The replication ceiling: how fast the slot alone streams a backlog, in its own process.

``python -m bench.ceiling --dsn D --slot S --publication P --changes N --mode raw|decode``
reads the slot with psycopg2's LogicalReplicationConnection (``decode=False``), counts row
changes (pgoutput I/U/D messages) and discards them; ``decode`` also runs our decoder
(``pipeline.sources.postgres.pgoutput.decode_message``) on every message. Feedback every 0.5 s.
Times from the first message to the N-th change; prints one JSON line, with how often the
reader found the socket empty and waited (``waits``).
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
    p.add_argument("--mode", choices=("raw", "decode"), default="raw")
    p.add_argument("--timeout", type=float, default=900)
    a = p.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
