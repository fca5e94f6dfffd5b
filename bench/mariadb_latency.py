"""MariaDB commit -> Kafka latency at a fixed offered load: ours and Debezium's MariaDB
connector, one after the other, each on a fresh table and topic of its own.

Why not the envelope's commit time, as the PostgreSQL part uses: a MariaDB binlog event
carries its time in whole seconds (``source.ts_ms`` is a multiple of 1000, for both tools),
so append time - ``ts_ms`` would be off by up to a second. The writer here keeps the time
each of its transactions' COMMIT returned (the client's clock, the broker's host: one
machine) and tags its rows with the transaction number (column ``txn``): an insert or update
is found by ``after.txn``, a delete by its key (ids are never reused). latency = broker append
time (``LogAppendTime`` topics) - that commit time, for every change committed after a
warm-up (a quarter of the run, at most 10 s). It is measured from the moment the writer knew
its transaction committed, so it is a few hundred microseconds shorter than from the binlog
write, the same for both tools.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from bench.common import cpu_seconds, log, proc_status, read_topic, wait_topic
from pipeline.stack import mariadb as stack_mariadb

DDL = ("CREATE TABLE {table} (id BIGINT PRIMARY KEY, name VARCHAR(100), qty INT, "
       "price DECIMAL(12,2), payload VARCHAR(255), txn BIGINT) CHARACTER SET utf8mb4")


class PacedWriter:
    """Transactions of ``txn_rows`` changes (70 % inserts, 20 % updates, 10 % deletes of the
    oldest live rows) at ``rate`` changes/s; remembers each transaction's commit time."""

    def __init__(self, port: int, table: str, rate: int, txn_rows: int, row_bytes: int) -> None:
        self.port, self.table, self.rate, self.txn_rows = port, table, rate, txn_rows
        self.payload = "x" * max(0, row_bytes - 48)
        self.commit_us: dict[int, int] = {}
        self.deleted_in: dict[int, int] = {}  # id -> the transaction that deleted it
        self.ops = {"insert": 0, "update": 0, "delete": 0}
        self.max_behind_s = 0.0
        self.started_us = 0

    def run(self, seconds: float) -> dict[str, Any]:
        ins, upd, dele = (max(1, self.txn_rows * p // 100) for p in (70, 20, 10))
        per_txn = ins + upd + dele
        live: collections.deque[int] = collections.deque()
        conn = stack_mariadb.connect(self.port)
        conn.autocommit(False)
        next_id, txn = 1, 0
        t0 = time.monotonic()
        self.started_us = int(time.time() * 1e6)
        try:
            with conn.cursor() as cur:
                while time.monotonic() - t0 < seconds:
                    due = t0 + txn * per_txn / self.rate
                    now = time.monotonic()
                    if due > now:
                        time.sleep(due - now)
                    else:
                        self.max_behind_s = max(self.max_behind_s, now - due)
                    txn += 1
                    cur.executemany(
                        f"INSERT INTO {self.table} VALUES (%s, %s, %s, %s, %s, %s)",
                        [(i, f"item {i}", i, f"{i}.50", self.payload, txn)
                         for i in range(next_id, next_id + ins)])
                    live.extend(range(next_id, next_id + ins))
                    next_id += ins
                    # the oldest live rows: never this transaction's own inserts
                    targets = [live[i] for i in range(min(upd, len(live) - ins))]
                    if targets:
                        cur.execute(f"UPDATE {self.table} SET qty = qty + 1, txn = %s "
                                    f"WHERE id IN ({', '.join(['%s'] * len(targets))})",
                                    [txn, *targets])
                    gone = [live.popleft() for _ in range(min(dele, len(live) - ins))]
                    if gone:
                        cur.execute(f"DELETE FROM {self.table} WHERE id IN "
                                    f"({', '.join(['%s'] * len(gone))})", gone)
                    conn.commit()
                    self.commit_us[txn] = int(time.time() * 1e6)
                    for i in gone:
                        self.deleted_in[i] = txn
                    self.ops["insert"] += ins
                    self.ops["update"] += len(targets)
                    self.ops["delete"] += len(gone)
        finally:
            conn.close()
        took = time.monotonic() - t0
        changes = sum(self.ops.values())
        return {"rows": changes, "ops": dict(self.ops), "seconds": round(took, 1),
                "rows_per_s": round(changes / took, 1),
                "max_behind_s": round(self.max_behind_s, 3)}

    def commit_us_of(self, value: dict[str, Any]) -> int:
        """The commit time of the change in an envelope (0: not one of this run's)."""
        after = value.get("after")
        if after:
            return self.commit_us.get(int(after["txn"]), 0)
        before = value.get("before") or {}
        txn = self.deleted_in.get(int(before.get("id", -1)))
        return self.commit_us.get(txn, 0) if txn is not None else 0


def run(mb: Any, kinds: dict[str, Any], tools: list[str], rate: int, seconds: float,
        txn_rows: int, row_bytes: int) -> dict[str, Any]:
    """Per tool: a fresh table and topic, the tool started, the writer at ``rate`` for
    ``seconds``, then every change's latency read back from the topic."""
    bench = mb.bench
    out: dict[str, Any] = {}
    for t in tools:
        table = f"{mb.db}.lat_{t}"
        mb.execute(DDL.replace("{table}", table))
        prefix = bench.name(f"ml{t[0]}")
        topic = bench.topic(f"{prefix}.{table}")
        log(f"mariadb latency: {t} at {rate} changes/s for {seconds:.0f} s")
        tool = kinds[t](mb, prefix, bench.work / f"mariadb-lat-{t}", table)
        warmup = min(10.0, seconds / 4)
        writer = PacedWriter(mb.port, table, rate, txn_rows, row_bytes)
        try:
            cpu0 = cpu_seconds(tool.pid)
            since_us = int((time.time() + warmup) * 1e6)
            wl = writer.run(seconds)
            records = wl["rows"] + wl["ops"]["delete"]  # a tombstone follows each delete
            got = wait_topic(bench.bootstrap, topic, records, timeout=120)
            cpu = cpu_seconds(tool.pid) - cpu0
            rss = proc_status(tool.pid).get("VmRSS", 0)
        finally:
            tool.stop()
        fig = read_topic(bench.bootstrap, topic, commit_after_us=since_us,
                         commit_us_of=writer.commit_us_of)
        # p50 per 10 s of commits: a tool that falls behind shows a growing series, one
        # that is steadily slow a flat one.
        series = []
        for lo in range(0, int(seconds), 10):
            part = read_topic(bench.bootstrap, topic,
                              commit_after_us=writer.started_us + lo * 1_000_000,
                              commit_before_us=writer.started_us + (lo + 10) * 1_000_000,
                              commit_us_of=writer.commit_us_of)
            series.append(_ms(part.quantile(0.5)))
        res: dict[str, Any] = {
            "offered_changes_per_s": rate, "achieved_changes_per_s": wl["rows_per_s"],
            "writer_max_behind_s": wl["max_behind_s"], "warmup_excluded_s": warmup,
            "measured_changes": fig.changes, "p50_ms": _ms(fig.quantile(0.5)),
            "p99_ms": _ms(fig.quantile(0.99)),
            "max_ms": _ms(fig.latencies_ms[-1] if fig.latencies_ms else None),
            "cpu_pct": round(100 * cpu / max(wl["seconds"], 1e-9), 1),
            "rss_mb": round(rss / 1024, 1), "p50_ms_per_10s_of_commits": series,
            "workload": wl, "topic": topic}
        if got < records:
            res["warning"] = f"only {got} of {records} records arrived"
        out[t] = res
        log(f"  {t}@{rate}: p50 {res['p50_ms']} ms p99 {res['p99_ms']} ms, "
            f"cpu {res['cpu_pct']} %")
    return out


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x, 1)
