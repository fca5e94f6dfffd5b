"""Memory: RSS of ``cdc capture`` and ``cdc worker`` over a long run, and of capture while it
streams one very large transaction.

Long run: capture and, per worker configuration (``--memory-workers``, engine:store; by
default both engines with the rocksdb:// seen-set, the default store), one worker per sink
(``--memory-sinks``, default search and cache), all running at once on their own consumer
groups; the workload writes N row changes at full speed; the run ends when every worker has
read every record. With ``--memory-prefill`` capture fills the topic first and stops, and the
workers then drain it alone, which on a small machine takes a fraction of the time (the
workers no longer share the cores with the workload, PostgreSQL and capture). VmRSS and VmHWM
of each process are sampled from /proc/<pid>/status every second, and each worker's RSS is
noted when it has read 25, 50, 75 and 100 % of the records (its ``cdc_worker_records_total``):
flat means RSS at 100 % within 10 % of RSS at 25 %.
Big transaction (``--big-txn-rows``, 0 skips it): one
``INSERT ... SELECT generate_series(1, N)`` (a single transaction of N rows, ~200-byte rows),
streamed by a fresh capture; its peak RSS (VmHWM).
"""

from __future__ import annotations

import threading
import time
from functools import partial
from typing import Any

from psycopg2 import sql

from bench.capture import Ours
from bench.common import (
    Bench,
    RssSampler,
    log,
    proc_status,
    wait_topic,
    workload,
    workload_result,
)
from bench.worker import SinkWorker, _counter, prefill, worker_env
from pipeline.harness import group_stable, wait_until


def long_run(bench: Bench, events: int, args: Any) -> dict[str, Any]:
    """Capture, the workload and the workers at once; or, with ``--memory-prefill``, the
    topic filled by capture first and then drained by the workers alone."""
    work = bench.work / "mem"
    cap: Ours | None = None
    slot = ""
    if args.memory_prefill:
        table, topic, written, records = prefill(bench, events, args, tag="mem")
    else:
        target = bench.capture_target("mem")
        table, topic, slot = target.table, target.topic, target.slot
        cap = Ours(bench, table, slot, target.publication, target.prefix, work)
    procs: dict[str, SinkWorker] = {}
    groups = []
    sinks = [s for s in args.memory_sinks.split(",") if s]
    for n, config in enumerate(c for c in args.memory_workers.split(",") if c):
        engine, _, store = config.partition(":")
        label = f"{engine}-{store.split(':')[0]}"
        folder = work / label
        env = {**worker_env(bench, table, topic, f"mem{n}", folder),
               "CDC_WORKER__ENGINE": engine, "CDC_WORKER__STORE": store or "memory://"}
        for sink in sinks:
            procs[f"worker-{sink} ({label})"] = SinkWorker(sink, env, folder)
            groups.append(f"{env['CDC_WORKER__APP_ID']}-{sink}")
    pids = {**({"capture": cap.pid} if cap else {}),
            **{name: p.pid for name, p in procs.items()}}
    sampler = RssSampler(pids, 1.0).start()
    progress = ProgressSampler(procs, 1.0).start()
    started = time.monotonic()
    try:
        if cap is not None:
            for group in groups:
                wait_until(partial(group_stable, bench.kafka, group), 120, 0.5)
            log(f"memory: long run, {events} row changes through capture and worker")
            wl = workload_result(workload(bench, table, "--rows", str(events), "--txn-rows",
                                          str(args.txn_rows), "--mix", args.mix,
                                          "--row-bytes", str(args.row_bytes)))
            written, records = wl["rows"], wl["rows"] + wl["ops"]["delete"]
        else:
            log(f"memory: long run, the workers drain {records} records alone")
        # an hour, or longer for a run whose workers read under ~300 records/s each
        done = wait_until(lambda: all(_counter(p.snapshot(), "cdc_worker_records_total")
                                      >= records for p in procs.values()),
                          max(3600.0, records / 300), 1.0)
    finally:
        sampler.stop()
        progress.stop()
        for p in procs.values():
            p.stop()
        if cap is not None:
            cap.stop()
            bench.drop_slot(slot)
    by_progress = {name: progress.quarters(name, records) for name in procs}
    for name, marks in by_progress.items():
        log(f"memory: {name}: RSS " + ", ".join(
            f"{q} % {marks.get(f'rss_mb_at_{q}pct_read', '?')} MB" for q in QUARTERS)
            + f" (growth 25->100 %: {marks.get('growth_25_to_100_pct', '?')} %)")
    return {"events": written, "records": records, "complete": done,
            "prefilled": bool(args.memory_prefill),
            "workers": args.memory_workers, "sinks": sinks,
            "minutes": round((time.monotonic() - started) / 60, 1),
            "rss": {name: sampler.summary(name) for name in pids},
            "rss_by_progress": by_progress}


QUARTERS = (25, 50, 75, 100)


class ProgressSampler:
    """Every ``interval`` s, each worker's records read (its metric snapshot) and its RSS."""

    def __init__(self, procs: dict[str, SinkWorker], interval: float) -> None:
        self.procs = procs
        self.interval = interval
        self.samples: dict[str, list[tuple[float, int]]] = {name: [] for name in procs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> ProgressSampler:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        for name, proc in self.procs.items():
            rss = proc_status(proc.pid).get("VmRSS")
            if rss:
                read = _counter(proc.snapshot(), "cdc_worker_records_total")
                self.samples[name].append((read, rss))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    def quarters(self, name: str, records: int) -> dict[str, float]:
        """RSS (MB) at the first sample where the worker had read each quarter of
        ``records``, and the growth from 25 % to 100 % in percent."""
        out: dict[str, float] = {}
        for q in QUARTERS:
            hit = next((rss for read, rss in self.samples[name] if read >= records * q / 100),
                       None)
            if hit is not None:
                out[f"rss_mb_at_{q}pct_read"] = round(hit / 1024, 1)
        first, last = out.get("rss_mb_at_25pct_read"), out.get("rss_mb_at_100pct_read")
        if first and last:
            out["growth_25_to_100_pct"] = round((last - first) / first * 100, 1)
        return out


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
    if args.big_txn_rows:
        out["big_txn"] = big_transaction(bench, args.big_txn_rows)
    return out


