"""Initial snapshots into Kafka, ours and Debezium's, and streaming latency during a backfill.

Snapshot (``snapshot``): tables filled server side (``INSERT ... SELECT generate_series``),
then ``VACUUM (ANALYZE)`` and one full read (TOAST included), so neither reader pays for hint
bits or a cold cache. Tables: ``--snapshot-rows`` rows of ~200 bytes (the capture bench's
table), ``--wide-rows`` rows of ~4 KB (an incompressible hex payload of 125 md5s, stored
out of line in TOAST), and, for ours only, a table of a tenth of ``--snapshot-rows`` (peak RSS
against table size). Each reader snapshots each table alone, in turn, with its own slot (it
creates it), publication and topic:

* ours: ``cdc capture`` with ``postgres.snapshot_mode=initial_only`` (snapshots, then exits 0)
  at each ``--snapshot-chunk-sizes`` with one reader, and at the first chunk size with each
  ``--snapshot-readers`` count (``postgres.snapshot_readers``: reader processes, whose CPU
  time ``wait4`` includes, peak RSS the largest process's); CPU time and peak RSS from the
  kernel's accounting of the exited process (``wait4``: user+system time, ``ru_maxrss``),
  start-up included;
* Debezium 3.6.1: ``snapshot.mode=initial_only`` on Kafka Connect standalone (the JVM stays
  up afterwards); CPU time (``/proc/<pid>/stat``) and VmHWM once every row is in Kafka,
  start-up included.

rows/s = rows / (broker append time of the last record - of the first) (start-up excluded,
as in the backlog drain); ``rows_per_s_from_start`` counts from the process start instead.
Ours (first chunk size, one reader) and Debezium read each table in turn for
``--snapshot-rounds`` rounds, ours first in even rounds and Debezium first in odd ones; the
median round of each stands for it and every round's rate is kept. Each run also records the
CPU the Kafka broker and PostgreSQL (the postmaster and its backends, ended ones included) used
meanwhile, per 1k rows, and how many of the machine's cores were busy: on a small machine the
servers' share bounds what any reader can reach.
``--snapshot-profile`` adds one more (unmeasured) ours snapshot of the ~200-byte table with
py-spy attached and keeps the functions with the most samples.

Backfill latency (``backfill-latency``): one ``cdc capture`` streams two tables from a slot
created beforehand (no initial snapshot): a workload table written at ``--backfill-rate``
rows/s and the ``--snapshot-rows`` table. Latency commit->Kafka (broker append time - commit
time, as in ``latency``) is measured twice in that run: first the workload alone, then the
workload again while ``python -m pipeline.cli snapshot start <big table>`` backfills the big
table; the second figure counts only changes committed while the backfill ran (after the
first second: capture is warm by then).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from psycopg2 import sql

from bench.capture import Ours, ours_env
from bench.common import (
    ROOT,
    Bench,
    RssSampler,
    ServerCpu,
    cpu_seconds,
    log,
    median_round,
    proc_status,
    read_topic,
    topic_count,
    topic_span,
    wait_topic,
    workload,
    workload_result,
)
from bench.debezium import DebeziumConnect
from bench.profile import summarise
from bench.workload import create_table
from pipeline.harness import PipelineProcess

#: ~200-byte rows like the workload's: 140 hex characters of payload.
NARROW_PAYLOAD = "substr(md5(i::text) || md5((i + 1)::text) || md5((i + 2)::text) || " \
                 "md5((i + 3)::text) || md5((i + 4)::text), 1, 140)"
#: ~4 KB rows: 125 md5s (4,000 hex characters) that pglz cannot shrink, so stored in TOAST.
WIDE_PAYLOAD = "(SELECT string_agg(md5((i::bigint * 1000 + j)::text), '') " \
               "FROM generate_series(1, 125) AS j)"


def fill_table(bench: Bench, name: str, rows: int, wide: bool) -> str:
    """``<schema>.<name>`` with ``rows`` rows (once per run: a second call reuses it)."""
    table = f"{bench.schema}.{name}"
    filled: dict[str, int] = bench.__dict__.setdefault("filled_tables", {})
    if filled.get(table) == rows:
        return table
    create_table(bench.dsn, table)
    ident = sql.Identifier(bench.schema, name)
    log(f"snapshot: filling {table} with {rows:,} {'~4 KB' if wide else '~200-byte'} rows")
    t0 = time.monotonic()
    step = 250_000
    for start in range(1, rows + 1, step):  # a few transactions, not one huge one
        bench.sql(sql.SQL(
            "INSERT INTO {} (id, name, qty, price, payload) SELECT i, 'item ' || i, "
            "i %% 1000, (i %% 100000)::numeric / 100, " + (WIDE_PAYLOAD if wide else
                                                          NARROW_PAYLOAD)
            + " FROM generate_series(%s, %s) AS i").format(ident),
            (start, min(start + step - 1, rows)))
    bench.sql(sql.SQL("VACUUM (ANALYZE) {}").format(ident))
    # Read every value once (TOAST too): both readers find the same warm cache.
    ((count, size),) = bench.sql(sql.SQL(
        "SELECT count(*), pg_total_relation_size(%s::regclass) FROM {} "
        "WHERE length(payload) >= 0").format(ident), (f"{bench.schema}.{name}",))
    log(f"  {count:,} rows, {size / 2**20:,.0f} MB with TOAST and index, "
        f"{time.monotonic() - t0:.0f} s")
    filled[table] = rows
    return table


def _exit_status(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, Any]:
    """Wait for ``proc`` and return (exit code, its resource usage) from ``wait4``."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {proc.pid} still running after {timeout:.0f} s")
        time.sleep(0.1)


def _figures(bench: Bench, topic: str, rows: int, started: float) -> dict[str, Any]:
    count, first, last = topic_span(bench.bootstrap, topic)
    out: dict[str, Any] = {"rows": rows, "records": count}
    if first is not None and last is not None:
        span = max((last - first) / 1000, 1e-3)
        out.update({"first_to_last_s": round(span, 2), "rows_per_s": round(count / span, 1),
                    "start_to_last_s": round(last / 1000 - started, 2),
                    "rows_per_s_from_start": round(count / (last / 1000 - started), 1)})
    if count != rows:
        out["warning"] = f"{count} records for {rows} rows"
    return out


def _target(bench: Bench, table: str, tag: str) -> tuple[str, str, str, str]:
    """Publication, slot name (the reader creates the slot), topic prefix and topic."""
    pub = bench.publication(bench.name(f"pub_{tag}"), table)
    slot = bench.name(f"slot_{tag}")
    bench.slots.append(slot)  # dropped at the end
    prefix = bench.name(tag)
    return pub, slot, prefix, bench.topic(f"{prefix}.{table}")


def ours_snapshot(bench: Bench, table: str, rows: int, tag: str, chunk: int,
                  profile: Path | None = None, readers: int = 1) -> dict[str, Any]:
    pub, slot, prefix, topic = _target(bench, table, tag)
    work = bench.work / tag
    env = {**ours_env(bench, table, slot, pub, prefix, work),
           "CDC_POSTGRES__SNAPSHOT_MODE": "initial_only",
           "CDC_POSTGRES__SNAPSHOT_CHUNK_SIZE": str(chunk),
           "CDC_POSTGRES__SNAPSHOT_READERS": str(readers)}
    log(f"snapshot: ours, {table} ({rows:,} rows), chunk {chunk}, {readers} reader(s)"
        + (" with py-spy" if profile else ""))
    started = time.time()
    servers = ServerCpu(bench)
    proc = PipelineProcess("capture", env, work / "capture.log")
    sampler = RssSampler({"capture": proc.proc.pid}, 0.5, threads=("capture",)).start()
    spy = None
    if profile is not None:
        spy = subprocess.Popen([_py_spy(), "record", "--pid", str(proc.proc.pid), "--rate",
                                "250", "--format", "raw", "--output", str(profile)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        code, usage = _exit_status(proc.proc, 3600)
    finally:
        sampler.stop()
        proc.stop()
        if spy is not None:
            spy.wait(60)
    wall = time.time() - started
    if code != 0:
        raise RuntimeError(f"capture exited {code}:\n{proc.tail()}")
    cpu = usage.ru_utime + usage.ru_stime
    out = _figures(bench, topic, rows, started)
    out.update(servers.result(rows))
    out.update({"chunk_size": chunk, "readers": readers, "process_s": round(wall, 1),
                "cpu_s": round(cpu, 1),
                "cpu_ms_per_1k_rows": round(1e6 * cpu / max(rows, 1), 1),
                "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
                "rss_series_mb": sampler.summary("capture").get("series_mb"),
                # the one reader's threads (the main one reads, encodes and produces;
                # librdkafka's broker thread compresses and sends); with reader processes
                # the work is in them, not in capture's threads
                "threads_cpu_ms_per_1k_rows": {
                    k: round(1e6 * v / max(rows, 1), 1)
                    for k, v in sampler.thread_cpu("capture").items() if v >= 0.05
                } if readers == 1 else {}})
    log(f"  ours chunk {chunk}: {out.get('rows_per_s')} rows/s, "
        f"{out['cpu_ms_per_1k_rows']} CPU-ms/1k rows, peak RSS {out['peak_rss_mb']} MB")
    return out


def debezium_snapshot(bench: Bench, table: str, rows: int, tag: str) -> dict[str, Any]:
    pub, slot, prefix, topic = _target(bench, table, tag)
    log(f"snapshot: Debezium, {table} ({rows:,} rows)")
    started = time.time()
    servers = ServerCpu(bench)
    connect = DebeziumConnect(bench.work / tag, f"dbz-{prefix}", bench.bootstrap,
                              bench.pg_params(), table, slot, pub, prefix, "initial_only")
    sampler = RssSampler({"debezium": connect.pid}, 1.0).start()
    try:
        got = wait_topic(bench.bootstrap, topic, rows, timeout=3600, settle=30)
        cpu = cpu_seconds(connect.pid)
        on_servers = servers.result(rows)
        mem = proc_status(connect.pid)
        alive = connect.alive()
    finally:
        sampler.stop()
        tail = connect.tail()
        connect.stop()
    if got < rows and not alive:
        raise RuntimeError(f"Debezium stopped after {got} of {rows} rows:\n{tail}")
    out = _figures(bench, topic, rows, started)
    out.update(on_servers)
    out.update({"cpu_s": round(cpu, 1), "cpu_ms_per_1k_rows": round(1e6 * cpu / max(rows, 1), 1),
                "peak_rss_mb": round(mem.get("VmHWM", 0) / 1024, 1),
                "rss_series_mb": sampler.summary("debezium").get("series_mb")})
    log(f"  Debezium: {out.get('rows_per_s')} rows/s, {out['cpu_ms_per_1k_rows']} CPU-ms/1k "
        f"rows, peak RSS {out['peak_rss_mb']} MB")
    return out


def run(bench: Bench, args: Any) -> dict[str, Any]:
    """Every table: ours at each chunk size, then Debezium, on the same data."""
    chunks = [int(c) for c in args.snapshot_chunk_sizes.split(",") if c]
    # 1 first: the one-process reader is the comparison every other figure is read against.
    readers = [1] + [int(n) for n in args.snapshot_readers.split(",") if n and int(n) != 1]
    tables = {
        "narrow": (fill_table(bench, "snap", args.snapshot_rows, False), args.snapshot_rows),
        "wide": (fill_table(bench, "snapwide", args.wide_rows, True), args.wide_rows),
    }
    out: dict[str, Any] = {"chunk_sizes": chunks, "tables": {}}
    for kind, (table, rows) in tables.items():
        res: dict[str, Any] = {"table": table, "rows": rows, "row_bytes": 4000 if kind == "wide"
                               else 200, "ours": {}}
        # Ours at the default chunk and Debezium, in turn for --snapshot-rounds rounds (ours
        # first in even rounds, Debezium in odd ones; the median round of each counts), then
        # ours at the other sizes: Debezium is not always the first or the last reader.
        ours: list[dict[str, Any]] = []
        theirs: list[dict[str, Any]] = []
        for rnd in range(max(1, args.snapshot_rounds)):
            again = f"n{rnd}" if rnd else ""
            for who in (("ours", "debezium") if rnd % 2 == 0 else ("debezium", "ours")):
                if who == "ours":
                    ours.append(ours_snapshot(bench, table, rows,
                                              f"s{kind[0]}o{chunks[0]}{again}", chunks[0]))
                else:
                    theirs.append(debezium_snapshot(bench, table, rows, f"s{kind[0]}d{again}"))
        res["ours"][str(chunks[0])] = median_round(ours, "rows_per_s")
        res["debezium"] = median_round(theirs, "rows_per_s")
        for n in readers[1:]:
            res["ours"][f"{chunks[0]}/{n}"] = ours_snapshot(
                bench, table, rows, f"s{kind[0]}o{chunks[0]}r{n}", chunks[0], readers=n)
        for chunk in chunks[1:]:
            res["ours"][str(chunk)] = ours_snapshot(bench, table, rows, f"s{kind[0]}o{chunk}",
                                                    chunk)
        out["tables"][kind] = res
    small_rows = max(args.snapshot_rows // 10, 1)
    small = fill_table(bench, "snapsmall", small_rows, False)
    out["small"] = {"table": small, "rows": small_rows,
                    "ours": ours_snapshot(bench, small, small_rows, f"sso{chunks[0]}",
                                          chunks[0])}
    if args.snapshot_profile:  # where the one reader's time goes, on each table
        out["profile"] = {}
        for kind, (table, rows) in tables.items():
            raw = bench.work / f"snapshot-{kind}.stacks.txt"
            ours_snapshot(bench, table, rows, f"sp{kind[0]}o{chunks[0]}", chunks[0],
                          profile=raw)
            top = summarise(raw, 25).splitlines()
            out["profile"][kind] = {"chunk_size": chunks[0], "rows": rows, "top": top}
            log(f"snapshot profile, {kind} rows:\n" + "\n".join(top))
    return out


# -- streaming latency with a backfill running ----------------------------------------------
def backfill_latency(bench: Bench, args: Any) -> dict[str, Any]:
    big = fill_table(bench, "snap", args.snapshot_rows, False)
    lat = f"{bench.schema}.bflat"
    create_table(bench.dsn, lat)
    pub = bench.name("pub_bf")
    bench.sql(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}, {}").format(
        sql.Identifier(pub), sql.Identifier(*lat.split(".")), sql.Identifier(*big.split("."))))
    bench.publications.append(pub)
    slot = bench.slot(bench.name("slot_bf"))  # exists: capture streams, no initial snapshot
    prefix = bench.name("bf")
    lat_topic = bench.topic(f"{prefix}.{lat}")
    big_topic = bench.topic(f"{prefix}.{big}")
    rate, seconds = args.backfill_rate, args.duration
    warmup = min(10.0, seconds / 4)
    work = bench.work / "backfill"
    cap = Ours(bench, f"{lat}, {big}", slot, pub, prefix, work)
    out: dict[str, Any] = {"offered_rows_per_s": rate, "seconds": seconds,
                           "warmup_excluded_s": warmup, "backfill_table": big,
                           "backfill_rows": args.snapshot_rows,
                           "chunk_size": args.backfill_chunk_size}
    try:
        next_id = 1
        for phase in ("without", "with"):
            backfill: _BackfillWatch | None = None
            if phase == "with":
                backfill = _BackfillWatch(bench, big_topic, args.snapshot_rows)
                start = subprocess.run(
                    [sys.executable, "-m", "pipeline.cli", "snapshot", "start", big,
                     "--chunk-size", str(args.backfill_chunk_size)],
                    env={**os.environ, **cap.env}, capture_output=True, text=True, cwd=ROOT,
                    timeout=120)
                if start.returncode != 0:
                    raise RuntimeError(f"cdc snapshot start failed: {start.stderr[-2000:]}")
                backfill.start()
            log(f"backfill-latency: {phase} backfill, {rate} rows/s for {seconds:.0f} s")
            # Capture is warm in the second phase: only its first second is left out.
            since_us = int((time.time() + (warmup if backfill is None else 1.0)) * 1e6)
            cpu0 = cpu_seconds(cap.pid)
            wl = workload_result(workload(
                bench, lat, "--rate", str(rate), "--duration", str(seconds), "--txn-rows",
                str(args.txn_rows), "--mix", args.mix, "--row-bytes", str(args.row_bytes),
                "--id-start", str(next_id)))
            until_us = int(time.time() * 1e6)
            next_id = wl["next_id"]
            cpu = cpu_seconds(cap.pid) - cpu0
            records = wl["rows"] + wl["ops"]["delete"]
            want = records + (out["without"]["records"] if phase == "with" else 0)
            got = wait_topic(bench.bootstrap, lat_topic, want, timeout=120)
            res: dict[str, Any] = {"achieved_rows_per_s": wl["rows_per_s"],
                                   "workload_max_behind_s": wl["max_behind_s"],
                                   "records": records, "cpu_pct": round(100 * cpu / seconds, 1)}
            if backfill is not None:
                bf = backfill.result(timeout=3600)
                out["backfill"] = bf
                if bf.get("done_at") is not None:
                    until_us = min(until_us, int(bf["done_at"] * 1e6))
                res["measured_s"] = round(max(until_us / 1e6 - since_us / 1e6, 0), 1)
            fig = read_topic(bench.bootstrap, lat_topic, commit_after_us=since_us,
                             commit_before_us=until_us)
            res.update({"changes": fig.changes, "p50_ms": fig.quantile(0.5),
                        "p99_ms": fig.quantile(0.99),
                        "max_ms": fig.latencies_ms[-1] if fig.latencies_ms else None})
            if got < want:
                res["warning"] = f"only {got} of {want} records arrived"
            out[phase] = res
            log(f"  {phase}: p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms over "
                f"{res['changes']} changes")
    finally:
        cap.stop()
        bench.drop_slot(slot)
    a, b = out["without"].get("p99_ms"), out["with"].get("p99_ms")
    out["p99_ratio"] = round(b / a, 2) if a and b else None
    return out


class _BackfillWatch:
    """Polls the backfilled table's topic until it holds every row: when the backfill
    started sending and when it was done."""

    def __init__(self, bench: Bench, topic: str, rows: int) -> None:
        self.bench, self.topic, self.rows = bench, topic, rows
        self.requested = time.time()
        self.done_at: float | None = None
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while topic_count(self.bench.bootstrap, self.topic) < self.rows:
            if time.time() - self.requested > 3600:
                return
            time.sleep(0.5)
        self.done_at = time.time()

    def result(self, timeout: float) -> dict[str, Any]:
        self._thread.join(timeout)
        count, first, last = topic_span(self.bench.bootstrap, self.topic)
        out: dict[str, Any] = {"rows_sent": count, "done_at": self.done_at,
                               "requested_to_done_s": None if self.done_at is None else
                               round(self.done_at - self.requested, 1)}
        if first is not None and last is not None and last > first:
            out["first_to_last_s"] = round((last - first) / 1000, 1)
            out["rows_per_s"] = round(count / ((last - first) / 1000), 1)
        if count < self.rows:
            out["warning"] = f"only {count} of {self.rows} rows arrived"
        return out


def _py_spy() -> str:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
    return spy
