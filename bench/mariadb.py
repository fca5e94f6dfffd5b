"""MariaDB binlog -> Kafka: our ``cdc capture`` (``capture.source: mysql``) and Debezium's
MariaDB connector draining the same backlog, one after the other.

Both tools are started once on the empty table and stopped, so each has saved a position
before the backlog (ours in its offsets topic, Debezium in its Connect offsets file). Then
the workload writes the backlog of N row changes, and each tool is started again alone and
drains it. changes/s = changes / (broker append time of the last change - of the first), so
start-up is not counted; CPU is the process's user + system time from its restart until the
last record arrived; peak RSS is its VmHWM (the JVM's includes Connect's start-up).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench import mariadb_latency
from bench.common import Bench, cpu_seconds, log, proc_status, read_topic, wait_topic
from bench.debezium import DebeziumConnect, wait_running
from pipeline.harness import PipelineProcess, wait_until
from pipeline.stack import mariadb as stack_mariadb

#: Debezium's MariaDB connector (a connector of its own since 2.7).
#: 3.5.0 is the newest served here: 3.6.0 and 3.6.1 (jar and plugin) are not in the registry.
DEBEZIUM_MARIADB = ("mariadb", "3.5.0.Final")
DDL = ("CREATE TABLE {db}.items (id BIGINT PRIMARY KEY, name VARCHAR(100), qty INT, "
       "price DECIMAL(12,2), payload VARCHAR(255)) CHARACTER SET utf8mb4")


class MariaBench:
    """A database of its own on the stack's MariaDB."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.port = int(bench.env["CDC_MYSQL__PORT"])
        self.db = f"bench_{bench.uid}"
        self.table = f"{self.db}.items"

    def execute(self, *statements: str, params: list[Any] | None = None) -> None:
        conn = stack_mariadb.connect(self.port)
        try:
            with conn.cursor() as cur:
                for st in statements:
                    cur.execute(st.replace("{db}", self.db), params)
            conn.commit()
        finally:
            conn.close()

    def backlog(self, rows: int, txn_rows: int, row_bytes: int) -> dict[str, int]:
        """Transactions of ``txn_rows`` inserts, then an update and a delete of earlier rows
        (70/20/10 %), until ``rows`` changes; returns the changes per op."""
        ops = {"insert": 0, "update": 0, "delete": 0}
        payload = "x" * max(0, row_bytes - 40)
        ins, upd, dele = (max(1, txn_rows * p // 100) for p in (70, 20, 10))
        conn = stack_mariadb.connect(self.port)
        next_id = 1
        try:
            with conn.cursor() as cur:
                while sum(ops.values()) < rows:
                    first = next_id
                    cur.executemany(
                        f"INSERT INTO {self.table} VALUES (%s, %s, %s, %s, %s)",
                        [(i, f"item {i}", i, f"{i}.50", payload)
                         for i in range(first, first + ins)])
                    next_id += ins
                    cur.execute(f"UPDATE {self.table} SET qty = qty + 1 WHERE id >= %s "
                                f"AND id < %s", (first, first + upd))
                    cur.execute(f"DELETE FROM {self.table} WHERE id >= %s AND id < %s",
                                (first + upd, first + upd + dele))
                    conn.commit()
                    ops["insert"] += ins
                    ops["update"] += upd
                    ops["delete"] += dele
        finally:
            conn.close()
        return ops

    def drop(self) -> None:
        self.execute("DROP DATABASE IF EXISTS {db}")


class Ours:
    label = "ours"

    def __init__(self, mb: MariaBench, prefix: str, work: Path, table: str | None = None) -> None:
        env = {**mb.bench.env, "CDC_CAPTURE__SOURCE": "mysql",
               "CDC_MYSQL__TABLES": f"[{table or mb.table}]",
               "CDC_MYSQL__SERVER_ID": str(200_000 + int(mb.bench.uid, 16) % 100_000),
               "CDC_MYSQL__SERVER_NAME": prefix, "CDC_KAFKA__TOPIC_PREFIX": prefix,
               "CDC_KAFKA__PARTITIONS": "3", "CDC_METRICS__SNAPSHOT_DIR": str(work / "metrics"),
               "CDC_LOG_LEVEL": "INFO"}
        self.proc = PipelineProcess("capture", env, work / "capture.log")
        self.pid = self.proc.proc.pid
        if not wait_until(lambda: "reading the binlog from" in self.proc.tail(200)
                          or not self.proc.alive(), 60) or not self.proc.alive():
            raise RuntimeError("capture did not start reading:\n" + self.proc.tail())

    def stop(self) -> None:
        self.proc.stop()


class Debezium:
    label = "debezium"

    def __init__(self, mb: MariaBench, prefix: str, work: Path, table: str | None = None) -> None:
        b = mb.bench
        connector = {
            "connector.class": "io.debezium.connector.mariadb.MariaDbConnector",
            "tasks.max": "1",
            "database.hostname": "127.0.0.1",
            "database.port": str(mb.port),
            # root: no_data still reads the schema, and may lock tables to do it.
            "database.user": "root",
            "database.password": "",
            "database.server.id": str(300_000 + int(b.uid, 16) % 100_000),
            "topic.prefix": prefix,
            "database.include.list": mb.db,
            "table.include.list": table or mb.table,
            "snapshot.mode": "no_data",
            "snapshot.locking.mode": "none",
            "decimal.handling.mode": "string",
            "schema.history.internal.kafka.bootstrap.servers": b.bootstrap,
            "schema.history.internal.kafka.topic": f"{prefix}.schema-history",
            "poll.interval.ms": "5",
            "max.batch.size": "10240",
            "max.queue.size": "40960",
        }
        self.connect = DebeziumConnect(work, f"dbz-{prefix}", b.bootstrap, {}, table or mb.table,
                                       "", "", prefix, plugin=DEBEZIUM_MARIADB, connector=connector)
        b.topics.append(f"{prefix}.schema-history")
        b.topics.append(prefix)  # its schema-change topic, if it made one
        self.pid = self.connect.pid
        # RUNNING comes before the binlog client connected: wait for its log line too.
        ok = wait_running(self.connect) and wait_until(
            lambda: "Connected to binlog" in self.connect.tail(400)
            or "onnected to MariaDB binlog" in self.connect.tail(400), 120)
        if not ok:
            tail = self.connect.tail()
            self.connect.stop()
            raise RuntimeError("Debezium did not start streaming:\n" + tail)

    def stop(self) -> None:
        self.connect.stop()


def run(bench: Bench, rows: int, txn_rows: int, row_bytes: int,
        tools: tuple[str, ...] = ("ours", "debezium")) -> dict[str, Any]:
    mb = MariaBench(bench)
    mb.execute(f"CREATE DATABASE {mb.db} CHARACTER SET utf8mb4", DDL)
    try:
        return _run(bench, mb, rows, txn_rows, row_bytes, tools)
    finally:
        mb.drop()


def latency(bench: Bench, rate: int, seconds: float, txn_rows: int, row_bytes: int,
            tools: tuple[str, ...] = ("ours", "debezium")) -> dict[str, Any]:
    """Commit -> Kafka latency at ``rate`` changes/s for ``seconds`` per tool, in a
    database of its own (:mod:`bench.mariadb_latency`)."""
    mb = MariaBench(bench)
    mb.db, mb.table = f"{mb.db}_lat", f"{mb.db}_lat.items"
    mb.execute(f"CREATE DATABASE {mb.db} CHARACTER SET utf8mb4")
    try:
        return mariadb_latency.run(mb, {"ours": Ours, "debezium": Debezium}, list(tools),
                                   rate, seconds, txn_rows, row_bytes)
    finally:
        mb.drop()


def _run(bench: Bench, mb: MariaBench, rows: int, txn_rows: int, row_bytes: int,
         tools: tuple[str, ...]) -> dict[str, Any]:
    kinds: dict[str, Any] = {"ours": Ours, "debezium": Debezium}
    prefixes = {t: bench.name(f"m{t[0]}") for t in tools}
    topics = {t: bench.topic(f"{prefixes[t]}.{mb.table}") for t in tools}
    out: dict[str, Any] = {"readers": {}, "errors": {}}
    ready = []
    for t in tools:  # each saves a position before the backlog
        work = bench.work / f"mariadb-{t}"
        try:
            kinds[t](mb, prefixes[t], work).stop()
            ready.append(t)
        except Exception as exc:  # noqa: BLE001 - reported; the other tool still runs
            log(f"mariadb: {t} could not start: {exc}")
            out["errors"][t] = str(exc)[-3000:]
    log(f"mariadb: writing {rows} row changes ({txn_rows} rows/txn)")
    t0 = time.monotonic()
    ops = mb.backlog(rows, txn_rows, row_bytes)
    changes = sum(ops.values())
    out["workload"] = {"rows": changes, "ops": ops, "seconds": round(time.monotonic() - t0, 1)}
    records = changes + ops["delete"]  # both follow a delete with a tombstone
    for t in ready:
        log(f"mariadb: {t} draining {changes} changes")
        tool = kinds[t](mb, prefixes[t], bench.work / f"mariadb-{t}")
        cpu0 = cpu_seconds(tool.pid)
        start = time.monotonic()
        got = wait_topic(bench.bootstrap, topics[t], records, timeout=600)
        wall = time.monotonic() - start
        cpu = cpu_seconds(tool.pid) - cpu0
        mem = proc_status(tool.pid)
        tool.stop()
        fig = read_topic(bench.bootstrap, topics[t])
        span = (fig.last_ms - fig.first_ms) / 1000
        res: dict[str, Any] = {
            "changes": fig.changes, "records": fig.records,
            "changes_per_s": round(fig.rows_per_s or 0, 1), "drain_s": round(span, 2),
            "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
            "cpu_ms_per_1k_changes": round(1e6 * cpu / max(fig.changes, 1), 1),
            "peak_rss_mb": round(mem.get("VmHWM", 0) / 1024, 1), "topic": topics[t]}
        if got < records:
            res["warning"] = f"only {got} of {records} records arrived"
        out["readers"][t] = res
        log(f"  {t}: {res['changes_per_s']} changes/s, cpu {res['cpu_ms_per_1k_changes']} "
            f"ms/1k, peak RSS {res['peak_rss_mb']} MB")
    return out
