"""Worker benchmarks: raw topic -> Elasticsearch + Redis.

Each sink has its own worker process and consumer group (``cdc worker --sink <name>``), so
throughput is measured per sink worker process. A raw topic is pre-filled with N change events
by our capture (a workload backlog drained by ``cdc capture``); then, one at a time, each sink
drains it with (1) ``cdc worker --sink <name>`` (faust) and (2) the same processing in a bare
confluent-kafka loop (``bench/bare_worker.py``), each run with its own consumer group and
Elasticsearch index prefix (so every run does the full indexing work). faust's rate comes
from the worker's metric snapshots (``cdc_worker_records_total`` every 0.25 s).

End to end: capture + worker running, the workload at a fixed offered load; commit -> indexed
and commit -> invalidated quantiles from the worker's ``cdc_commit_to_sink_latency{sink}``
histogram, between a snapshot taken after a warm-up and one taken after the run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from bench.capture import Ours
from bench.common import (
    ROOT,
    Bench,
    cpu_seconds,
    log,
    median_round,
    run_json,
    wait_topic,
    workload,
    workload_result,
)
from pipeline.harness import group_stable, wait_until
from pipeline.metrics import quantiles_between, read_snapshots


def worker_env(bench: Bench, table: str, topic: str, tag: str, work: Path) -> dict[str, str]:
    return {
        **bench.env,
        "CDC_POSTGRES__TABLES": f"[{table}]",
        "CDC_WORKER__TOPICS": f"[{topic}]",
        "CDC_WORKER__APP_ID": bench.name(f"grp_{tag}"),
        "CDC_WORKER__DEAD_LETTER_TOPIC": bench.name(f"{tag}.dead-letter"),
        "CDC_ELASTICSEARCH__INDEX_PREFIX": bench.name(f"{tag}."),
        "CDC_REDIS__KEYS": json.dumps({table: ["bench:item:{id}", "bench:name:{name}"]}),
        "CDC_METRICS__SNAPSHOT_DIR": str(work / "metrics"),
        "CDC_METRICS__INTERVAL_S": "0.25",
        "CDC_WORKER_DATADIR": str(work / "worker-data"),
        # ERROR, not WARNING: `cdc worker` hands the level to faust's -l, which rejects
        # "warning" (reported).
        "CDC_LOG_LEVEL": "ERROR",
    }


SINKS = ("search", "cache")


class SinkWorker:
    """``cdc worker --sink <name>``: one faust app for one sink, in its own process group."""

    def __init__(self, sink: str, env: dict[str, str], work: Path) -> None:
        self.sink = sink
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.log = work / f"worker-{sink}.log"
        self._out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "worker", "--sink", sink],
            env={**os.environ, **env}, stdout=self._out, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=ROOT)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def snapshot(self) -> dict[str, Any]:
        snaps = read_snapshots(self.work / "metrics")
        return snaps.get(f"worker-{self.sink}-{self.pid}", {})

    def stop(self, timeout: float = 20.0) -> None:
        if self.alive():
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._out.close()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def prefill(bench: Bench, events: int, args: Any,
            tag: str = "wk") -> tuple[str, str, int, int]:
    """A raw topic holding ``events`` row changes written by our capture.
    Returns (table, topic, change events, records incl. tombstones)."""
    target = bench.capture_target(tag)
    table, pub, slot = target.table, target.publication, target.slot
    prefix, topic = target.prefix, target.topic
    log(f"{tag}: pre-filling {topic} with {events} events")
    wl = workload_result(workload(bench, table, "--rows", str(events), "--txn-rows",
                                  str(args.txn_rows), "--mix", args.mix,
                                  "--row-bytes", str(args.row_bytes)))
    records = wl["rows"] + wl["ops"]["delete"]
    cap = Ours(bench, table, slot, pub, prefix, bench.work / f"{tag}-capture")
    try:
        # capture drains a backlog at ~30k records/s here: 15 minutes, or longer for 10M+
        got = wait_topic(bench.bootstrap, topic, records, timeout=max(900.0, records / 10_000))
    finally:
        cap.stop()
        bench.drop_slot(slot)
    if got < records:
        raise RuntimeError(f"pre-fill: {got} of {records} records")
    return table, topic, wl["rows"], records


def _counter(snap: dict[str, Any], name: str) -> float:
    return sum(v for k, v in snap.get("counters", {}).items()
               if k == name or k.startswith(name + "{"))


def faust_drain(bench: Bench, sink: str, table: str, topic: str, events: int,
                records: int, extra_env: dict[str, str] | None = None,
                tag: str = "wf") -> dict[str, Any]:
    work = bench.work / f"wk-{tag}-{sink}"
    env = {**worker_env(bench, table, topic, f"{tag}{sink[0]}", work), **(extra_env or {})}
    proc = SinkWorker(sink, env, work)
    first_t = first_cpu = None
    first_n = last_n = 0.0
    deadline = time.monotonic() + 1800
    try:
        while time.monotonic() < deadline and proc.alive():
            snap = proc.snapshot()
            n = _counter(snap, "cdc_worker_records_total")
            if n and first_t is None:
                first_t, first_cpu, first_n = snap["time"], cpu_seconds(proc.pid), n
            last_n = n
            if n >= records:
                break
            time.sleep(0.1)
        end_t = proc.snapshot().get("time", time.time())
        cpu = cpu_seconds(proc.pid) - (first_cpu or 0)
    finally:
        proc.stop()
    if first_t is None:
        raise RuntimeError(f"faust worker ({sink}) processed nothing:\n" + proc.tail())
    # The first non-zero snapshot already counts first_n records: the rate is over the rest.
    secs = end_t - first_t
    share = (last_n - first_n) / last_n if last_n else 0
    return {"sink": sink, "records": int(last_n), "events": events, "seconds": round(secs, 2),
            "events_per_s": round(events * share / secs, 1) if secs > 0 else None,
            "records_per_s": round((last_n - first_n) / secs, 1) if secs > 0 else None,
            "cpu_s": round(cpu, 1), "complete": last_n >= records}


def bare_drain(bench: Bench, sink: str, table: str, topic: str, records: int,
               extra_env: dict[str, str] | None = None, tag: str = "wb") -> dict[str, Any]:
    work = bench.work / f"wk-{tag}-{sink}"
    env = {**worker_env(bench, table, topic, f"{tag}{sink[0]}", work), **(extra_env or {})}
    return run_json(  # type: ignore[no-any-return]
        [sys.executable, "-m", "bench.bare_worker", "--sink", sink, "--records", str(records)],
        env=env)


ENGINES = ("faust", "bare", "kafka_engine")


def _drain(bench: Bench, engine: str, sink: str, table: str, topic: str, events: int,
           records: int, rnd: int) -> dict[str, Any]:
    # Each round has its own consumer groups, index prefixes and data directories.
    suffix = str(rnd) if rnd else ""
    if engine == "faust":
        return faust_drain(bench, sink, table, topic, events, records, tag=f"wf{suffix}")
    if engine == "bare":
        return bare_drain(bench, sink, table, topic, records, tag=f"wb{suffix}")
    return faust_drain(bench, sink, table, topic, events, records,
                       {"CDC_WORKER__ENGINE": "kafka"}, f"wk{suffix}")


def round_order(rnd: int) -> tuple[str, ...]:
    """The engines' order in round ``rnd``: rotated every round, so none always drains
    first after the pre-fill (when Elasticsearch is still merging its segments)."""
    k = rnd % len(ENGINES)
    return ENGINES[k:] + ENGINES[:k]


def throughput(bench: Bench, args: Any) -> dict[str, Any]:
    table, topic, events, records = prefill(bench, args.worker_events, args)
    rounds = max(1, getattr(args, "worker_rounds", 1))
    out: dict[str, Any] = {"topic_records": records, "events": events, "batch_size": 500,
                           "rounds": rounds}
    sinks = [s for s in getattr(args, "worker_sinks", ",".join(SINKS)).split(",") if s]
    for sink in sinks:
        runs: dict[str, list[dict[str, Any]]] = {e: [] for e in ENGINES}
        for rnd in range(rounds):
            for engine in round_order(rnd):
                log(f"worker: {sink} sink, {engine} draining (round {rnd + 1} of {rounds})")
                runs[engine].append(_drain(bench, engine, sink, table, topic, events,
                                           records, rnd))
                log(f"  {engine}/{sink}: {runs[engine][-1]['events_per_s']} events/s")
        out[sink] = {e: median_round(r, "events_per_s") for e, r in runs.items()}
        if getattr(args, "worker_no_dedup", False):
            # faust's own cost without the dedup table's changelog writes.
            off = {"CDC_WORKER__DEDUP__ENABLED": "false"}
            log(f"worker: {sink} sink, faust with dedup off")
            out[sink]["faust_no_dedup"] = faust_drain(bench, sink, table, topic, events, records,
                                                      off, "wn")
            log(f"  faust/{sink}/no dedup: {out[sink]['faust_no_dedup']['events_per_s']} ev/s")
            out[sink]["bare_no_dedup"] = bare_drain(bench, sink, table, topic, records, off,
                                                    "wm")
            log(f"  bare/{sink}/no dedup: {out[sink]['bare_no_dedup']['events_per_s']} ev/s")
    return out


def end_to_end(bench: Bench, args: Any) -> dict[str, Any]:
    target = bench.capture_target("e2e")
    table, pub, slot = target.table, target.publication, target.slot
    prefix, topic = target.prefix, target.topic
    work = bench.work / "e2e"
    env = worker_env(bench, table, topic, "e2e", work)
    app_id = env["CDC_WORKER__APP_ID"]
    rate, seconds = args.e2e_rate, args.duration
    cap = Ours(bench, table, slot, pub, prefix, work)
    procs = [SinkWorker(sink, env, work) for sink in SINKS]

    def snaps() -> dict[str, dict[str, Any]]:
        return {p.sink: p.snapshot() for p in procs}

    def all_done(records: int) -> bool:
        return all(_counter(s, "cdc_worker_records_total") >= records for s in snaps().values())

    try:
        for sink in SINKS:
            if not wait_until(partial(group_stable, bench.kafka, f"{app_id}-{sink}"), 120,
                              0.5):
                raise RuntimeError(f"{sink} worker group never became stable")
        log(f"e2e: {rate} rows/s for {seconds:.0f} s (capture + faust worker)")
        wl_proc = workload(bench, table, "--rate", str(rate), "--duration", str(seconds),
                           "--txn-rows", str(args.txn_rows), "--mix", args.mix,
                           "--row-bytes", str(args.row_bytes))
        time.sleep(min(10.0, seconds / 4))
        before = {k: s.get("latency_ms", {}) for k, s in snaps().items()}
        wl = workload_result(wl_proc)
        records = wl["rows"] + wl["ops"]["delete"]
        wait_until(lambda: all_done(records), 120, 0.25)
        time.sleep(0.6)
        after = {k: s.get("latency_ms", {}) for k, s in snaps().items()}
    finally:
        for p in procs:
            p.stop()
        cap.stop()
        bench.drop_slot(slot)
    sinks: dict[str, Any] = {}
    for proc_sink, hists in after.items():
        for key, hist in hists.items():
            if not key.startswith("cdc_commit_to_sink_latency"):
                continue
            sink = key.split('sink="', 1)[1].rstrip('"}') if 'sink="' in key else proc_sink
            count, (p50, p99) = quantiles_between(
                before[proc_sink].get(key, {}).get("buckets"), hist["buckets"])
            sinks[sink] = {"count": count, "p50_ms": p50, "p99_ms": p99}
    return {"offered_rows_per_s": rate, "achieved_rows_per_s": wl["rows_per_s"],
            "seconds": seconds, "warmup_excluded_s": min(10.0, seconds / 4), "sinks": sinks,
            "note": "latency quantiles are log-bucket upper bounds (10 % wide)"}
