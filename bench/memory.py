"""Memory: RSS of ``cdc capture`` and ``cdc worker`` over a long run, and of capture while it
streams one very large transaction.

Long run: capture and, per worker configuration (``--memory-workers``, engine:store; by
default the Faust engine with the memory:// seen-set and the kafka engine with rocksdb://),
one worker per sink (search, cache), all running at once on their own consumer groups; the
workload writes N row changes at full speed; the run ends when every worker has read every
record. VmRSS and VmHWM of each process are sampled from /proc/<pid>/status every second:
flat means RSS at the end ~ RSS at 25 % of the run. Big transaction: one
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
    cap = Ours(bench, table, slot, pub, prefix, work)
    procs: dict[str, SinkWorker] = {}
    groups = []
    for n, config in enumerate(c for c in args.memory_workers.split(",") if c):
        engine, _, store = config.partition(":")
        label = f"{engine}-{store.split(':')[0]}"
        folder = work / label
        env = {**worker_env(bench, table, topic, f"mem{n}", folder),
               "CDC_WORKER__ENGINE": engine, "CDC_WORKER__STORE": store or "memory://"}
        for sink in SINKS:
            procs[f"worker-{sink} ({label})"] = SinkWorker(sink, env, folder)
            groups.append(f"{env['CDC_WORKER__APP_ID']}-{sink}")
    pids = {"capture": cap.pid, **{name: p.pid for name, p in procs.items()}}
    sampler = RssSampler(pids, 1.0).start()
    started = time.monotonic()
    try:
        for group in groups:
            wait_until(partial(group_stable, bench.bootstrap, group), 120, 0.5)
        log(f"memory: long run, {events} row changes through capture and worker")
        wl = workload_result(workload(bench, table, "--rows", str(events), "--txn-rows",
                                      str(args.txn_rows), "--mix", args.mix,
                                      "--row-bytes", str(args.row_bytes)))
        records = wl["rows"] + wl["ops"]["delete"]
        done = wait_until(lambda: all(_counter(p.snapshot(), "cdc_worker_records_total")
                                      >= records for p in procs.values()), 3600, 1.0)
    finally:
        sampler.stop()
        for p in procs.values():
            p.stop()
        cap.stop()
        bench.drop_slot(slot)
    return {"events": wl["rows"], "records": records, "complete": done,
            "workers": args.memory_workers,
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


