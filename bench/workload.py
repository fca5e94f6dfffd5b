"""Workload generator, run as its own process so it never shares a CPU slice with what it
measures: ``python -m bench.workload --dsn ... --table s.t [--rate R --duration S | --rows N]``.

Each transaction changes ``--txn-rows`` rows (default 50) with one multi-row INSERT, one
UPDATE and one DELETE drawn from the ``--mix`` (percentages of insert/update/delete; updates
and deletes hit random live rows this process inserted). ``--rate`` paces transactions on an
absolute schedule (fixed offered load; if it falls behind it catches up without sleeping and
reports the rate it achieved); without it rows are written as fast as one connection can.
``--outbox schema.table`` also writes one outbox event per changed row in the same
transaction, with :func:`pipeline.outbox.publish` (aggregate ``item``, the row id; the payload
carries the client's clock when written, ``ts_us``, from which the bench measures latency);
with ``--outbox-per txn`` one event per transaction instead.
Prints one JSON line with what it did.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Any

import psycopg2
from psycopg2 import sql
from psycopg2.extras import execute_values

from pipeline import outbox

DDL = (
    "CREATE TABLE {} (id bigint PRIMARY KEY, name text NOT NULL, qty int NOT NULL, "
    "price numeric(12,2) NOT NULL, payload text, updated_at timestamptz NOT NULL DEFAULT now())"
)
#: The aggregate type of ``--outbox`` events (their topic is the outbox topic template's).
OUTBOX_AGGREGATE = "item"


def create_table(dsn: str, table_id: str) -> None:
    """The benchmark table: a few typed columns plus a text payload that sets the row size."""
    schema, table = table_id.split(".", 1)
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        cur.execute(sql.SQL(DDL).format(sql.Identifier(schema, table)))
    conn.close()


def parse_mix(text: str) -> tuple[float, float, float]:
    """``"70,20,10"`` -> fractions of insert, update, delete."""
    parts = [float(p) for p in text.split(",")]
    if len(parts) != 3 or min(parts) < 0 or sum(parts) <= 0:
        raise argparse.ArgumentTypeError("--mix takes three percentages: insert,update,delete")
    total = sum(parts)
    return parts[0] / total, parts[1] / total, parts[2] / total


class Workload:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.mix = parse_mix(args.mix)
        self.rng = random.Random(args.seed)
        self.next_id = args.id_start
        self.live: list[int] = []
        # A pool of payloads: random (incompressible-ish) text without per-row CPU cost.
        width = max(args.row_bytes - 60, 0)
        self.payloads = [os.urandom(width // 2 + 1).hex()[:width] for _ in range(256)]
        self.counts = {"insert": 0, "update": 0, "delete": 0}
        self.events_written = 0
        self.table = sql.Identifier(*args.table.split(".", 1))
        self.insert_sql = sql.SQL(
            "INSERT INTO {} (id, name, qty, price, payload) VALUES %s"
        ).format(self.table).as_string
        self.update_sql = sql.SQL(
            "UPDATE {} SET qty = qty + 1, name = %s, updated_at = now() WHERE id = ANY(%s)"
        ).format(self.table).as_string
        self.delete_sql = sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(
            self.table
        ).as_string

    def events(self, cur: Any, op: str, ids: list[int]) -> None:
        """One outbox event per changed row, in the caller's transaction (``--outbox``)."""
        if self.args.outbox_per != "row":
            return
        for i in ids:
            outbox.publish(cur.connection, OUTBOX_AGGREGATE, i, f"item.{op}",
                           {"id": i, "op": op, "ts_us": int(time.time() * 1e6)},
                           table=self.args.outbox)

    def split(self, n: int) -> tuple[int, int, int]:
        ins_f, upd_f, _ = self.mix
        ins = upd = dele = 0
        for _ in range(n):
            r = self.rng.random()
            if r < ins_f or len(self.live) < n:
                ins += 1
            elif r < ins_f + upd_f:
                upd += 1
            else:
                dele += 1
        return ins, upd, dele

    def transaction(self, cur: Any, n: int) -> int:
        ins, upd, dele = self.split(n)
        if ins:
            rows = []
            for _ in range(ins):
                i = self.next_id
                self.next_id += 1
                rows.append((i, f"item {i}", i % 1000, f"{i % 100000}.{i % 100:02d}",
                             self.payloads[i & 255]))
                self.live.append(i)
            execute_values(cur, self.insert_sql(cur), rows, page_size=len(rows))
            if self.args.outbox:
                self.events(cur, "c", [r[0] for r in rows])
        if upd:
            ids = list({self.rng.choice(self.live) for _ in range(upd)})
            cur.execute(self.update_sql(cur), (f"renamed {self.rng.random():.6f}", ids))
            upd = len(ids)
            if self.args.outbox:
                self.events(cur, "u", ids)
        if dele:
            ids = []
            for _ in range(min(dele, len(self.live) - 1)):
                k = self.rng.randrange(len(self.live))
                self.live[k], self.live[-1] = self.live[-1], self.live[k]
                ids.append(self.live.pop())
            cur.execute(self.delete_sql(cur), (ids,))
            dele = len(ids)
            if self.args.outbox:
                self.events(cur, "d", ids)
        if self.args.outbox and self.args.outbox_per == "txn":
            self.events_written += 1
            first = self.live[-1] if self.live else 0
            outbox.publish(cur.connection, OUTBOX_AGGREGATE, first, "item.batch",
                           {"id": first, "op": "batch", "rows": ins + upd + dele,
                            "ts_us": int(time.time() * 1e6)}, table=self.args.outbox)
        elif self.args.outbox:
            self.events_written += ins + upd + dele
        self.counts["insert"] += ins
        self.counts["update"] += upd
        self.counts["delete"] += dele
        return ins + upd + dele

    def run(self) -> dict[str, Any]:
        a = self.args
        conn = psycopg2.connect(a.dsn)
        conn.autocommit = False
        cur = conn.cursor()
        rows = txns = 0
        started = time.monotonic()
        period = a.txn_rows / a.rate if a.rate else 0.0
        deadline = started + a.duration if a.duration else None
        behind_max = 0.0
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if a.rows and rows >= a.rows:
                break
            if period:
                due = started + txns * period
                if due > now:
                    time.sleep(due - now)
                else:
                    behind_max = max(behind_max, now - due)
            n = a.txn_rows if not a.rows else min(a.txn_rows, a.rows - rows)
            rows += self.transaction(cur, n)
            conn.commit()
            txns += 1
        elapsed = time.monotonic() - started
        cur.close()
        conn.close()
        return {
            "rows": rows,
            "transactions": txns,
            "rows_per_txn": a.txn_rows,
            "seconds": round(elapsed, 3),
            "rows_per_s": round(rows / elapsed, 1) if elapsed else None,
            "offered_rows_per_s": a.rate,
            "max_behind_s": round(behind_max, 3),
            "mix": a.mix,
            "row_bytes": a.row_bytes,
            "ops": self.counts,
            "outbox_events": self.events_written,
            "next_id": self.next_id,
        }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.workload", description=__doc__)
    p.add_argument("--dsn", required=True)
    p.add_argument("--table", required=True, help="schema.table (created with --create)")
    p.add_argument("--create", action="store_true", help="create the schema and table first")
    p.add_argument("--rate", type=float, default=0, help="offered rows/s (0 = max speed)")
    p.add_argument("--duration", type=float, default=0, help="seconds (with --rate)")
    p.add_argument("--rows", type=int, default=0, help="stop after this many row changes")
    p.add_argument("--txn-rows", type=int, default=50, help="rows per transaction")
    p.add_argument("--mix", default="70,20,10", help="insert,update,delete percentages")
    p.add_argument("--row-bytes", type=int, default=200, help="approximate row size")
    p.add_argument("--id-start", type=int, default=1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--outbox", default=None, metavar="SCHEMA.TABLE",
                   help="also write outbox events (pipeline.outbox.publish) in each transaction")
    p.add_argument("--outbox-per", choices=("row", "txn"), default="row",
                   help="--outbox: one event per changed row, or one per transaction")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.rows or args.duration):
        print("give --rows or --duration", file=sys.stderr)
        return 2
    if args.create:
        create_table(args.dsn, args.table)
    print(json.dumps(Workload(args).run()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
