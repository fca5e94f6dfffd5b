"""Memory: RSS of ``cdc capture`` and ``cdc worker`` over a long run, and of capture while it
streams one very large transaction.

Long run: capture and one faust worker per sink (search, cache) running; the workload writes
N row changes at full speed; the run ends when the workers have read every record. VmRSS and
VmHWM of the three processes are sampled from /proc/<pid>/status every second: flat means
RSS at the end ~ RSS at 25 % of the run. Big transaction: one
``INSERT ... SELECT generate_series(1, N)`` (a single transaction of N rows, ~200-byte rows),
streamed by a fresh capture; its peak RSS (VmHWM).
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from psycopg2 import sql

from bench.capture import Ours
from bench.common import Bench, RssSampler, log, wait_topic, workload, workload_result
from bench.worker import SINKS, SinkWorker, _counter, worker_env
from pipeline.harness import group_stable, wait_until


def long_run(bench: Bench, events: int, args: Any) -> dict[str, Any]:
    target = bench.capture_target("mem")
    table, pub, slot = target.table, target.publication, target.slot
    prefix, topic = target.prefix, target.topic
    work = bench.work / "mem"
    env = worker_env(bench, table, topic, "mem", work)
    app_id = env["CDC_WORKER__APP_ID"]
    cap = Ours(bench, table, slot, pub, prefix, work)
    procs = [SinkWorker(sink, env, work) for sink in SINKS]
    pids = {"capture": cap.pid, **{f"worker-{p.sink}": p.pid for p in procs}}
    sampler = RssSampler(pids, 1.0).start()
    started = time.monotonic()
    try:
        for sink in SINKS:
            wait_until(partial(group_stable, bench.bootstrap, f"{app_id}-{sink}"), 120, 0.5)
        log(f"memory: long run, {events} row changes through capture and worker")
        wl = workload_result(workload(bench, table, "--rows", str(events), "--txn-rows",
                                      str(args.txn_rows), "--mix", args.mix,
                                      "--row-bytes", str(args.row_bytes)))
        records = wl["rows"] + wl["ops"]["delete"]
        done = wait_until(lambda: all(_counter(p.snapshot(), "cdc_worker_records_total")
                                      >= records for p in procs), 3600, 1.0)
    finally:
        sampler.stop()
        for p in procs:
            p.stop()
        cap.stop()
        bench.drop_slot(slot)
    return {"events": wl["rows"], "records": records, "complete": done,
            "minutes": round((time.monotonic() - started) / 60, 1),
            "rss": {name: sampler.summary(name) for name in pids}}


def big_transaction(bench: Bench, rows: int) -> dict[str, Any]:
    target = bench.capture_target("big", "bigtxn")
    table, pub, slot = target.table, target.publication, target.slot
    prefix, topic = target.prefix, target.topic
    work = bench.work / "big"
    cap = Ours(bench, table, slot, pub, prefix, work)
    sampler = RssSampler({"capture": cap.pid}, 0.5).start()
    try:
        log(f"memory: one transaction of {rows} rows")
        t0 = time.monotonic()
        bench.sql(sql.SQL(
            "INSERT INTO {} (id, name, qty, price, payload) SELECT i, 'item ' || i, i %% 1000, "
            "(i %% 100000)::numeric / 100, repeat(md5(i::text), 4) "
            "FROM generate_series(1, %s) AS i").format(sql.Identifier(*table.split("."))),
            (rows,))
        written = time.monotonic() - t0
        got = wait_topic(bench.bootstrap, topic, rows, timeout=1800)
        streamed = time.monotonic() - t0
    finally:
        sampler.stop()
        cap.stop()
        bench.drop_slot(slot)
    return {"rows": rows, "arrived": got, "insert_s": round(written, 1),
            "commit_to_all_in_kafka_s": round(streamed - written, 1),
            "rss": {"capture": sampler.summary("capture")}}


def run(bench: Bench, args: Any) -> dict[str, Any]:
    out = {"long": long_run(bench, args.memory_events, args)}
    out["big_txn"] = big_transaction(bench, args.big_txn_rows)
    return out


