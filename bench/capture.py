"""Capture benchmarks: ours (``cdc capture``) and Debezium side by side, and the ceiling.

Throughput (``backlog``): one table, one publication and one slot per reader are created
*before* the workload writes a backlog of N row changes, so every reader sees exactly the same
WAL. Then each reader drains it alone, one after the other (never concurrently, so each has
the machine to itself); rows/s = changes / (broker append time of the last change - of the
first), i.e. start-up is not counted. Readers: ours, Debezium, the raw slot (read and
discard) and our decoder alone.

Latency (``latency``): for each offered load and each tool, a fresh table, publication and
slot; the tool starts, the workload runs at that fixed rate for the duration, and
latency = broker append time (topics use ``LogAppendTime``) - source commit time in the
envelope, for every change committed after a warm-up (a quarter of the run, at most 10 s: the
JVM's JIT and our first connections are not steady state). Same method for both tools.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Protocol

from bench.common import (
    Bench,
    TopicFigures,
    cpu_seconds,
    log,
    proc_status,
    read_topic,
    run_json,
    wait_topic,
    workload,
    workload_result,
)
from bench.debezium import DebeziumConnect, wait_running
from bench.workload import create_table
from pipeline.harness import PipelineProcess, slot_active, wait_until


class Tool(Protocol):
    pid: int

    def stop(self) -> None: ...
    def tail(self) -> str: ...


def ours_env(bench: Bench, table: str, slot: str, pub: str, prefix: str,
             work: Path) -> dict[str, str]:
    """The CDC_* settings of a bench ``cdc capture`` (``table``: one or ``a, b``)."""
    return {
        **bench.env,
        "CDC_POSTGRES__TABLES": f"[{table}]",
        "CDC_POSTGRES__SLOT": slot,
        "CDC_POSTGRES__PUBLICATION": pub,
        "CDC_KAFKA__TOPIC_PREFIX": prefix,
        "CDC_KAFKA__PARTITIONS": "3",
        "CDC_METRICS__SNAPSHOT_DIR": str(work / "metrics"),
        "CDC_LOG_LEVEL": "WARNING",
    }


class Ours:
    """``cdc capture`` as a process, configured by CDC_* variables."""

    label = "ours"

    def __init__(self, bench: Bench, table: str, slot: str, pub: str, prefix: str,
                 work: Path, extra_env: dict[str, str] | None = None) -> None:
        self.env = {**ours_env(bench, table, slot, pub, prefix, work), **(extra_env or {})}
        self.proc = PipelineProcess("capture", self.env, work / "capture.log")
        self.pid = self.proc.proc.pid
        if not wait_until(lambda: slot_active(bench.dsn, slot), 60):
            raise RuntimeError("capture did not start streaming:\n" + self.proc.tail())

    def stop(self) -> None:
        self.proc.stop()

    def tail(self) -> str:
        return self.proc.tail()


class Debezium:
    label = "debezium"

    def __init__(self, bench: Bench, table: str, slot: str, pub: str, prefix: str,
                 work: Path, snapshot_mode: str = "no_data") -> None:
        self.connect = DebeziumConnect(work, f"dbz-{prefix}", bench.bootstrap, bench.pg_params(),
                                       table, slot, pub, prefix, snapshot_mode)
        self.pid = self.connect.pid
        ok = wait_running(self.connect) and wait_until(lambda: slot_active(bench.dsn, slot), 60)
        if not ok:
            tail = self.connect.tail()
            self.connect.stop()
            raise RuntimeError("Debezium did not start streaming:\n" + tail)

    def stop(self) -> None:
        self.connect.stop()

    def tail(self) -> str:
        return self.connect.tail()


def topic_figures(fig: TopicFigures) -> dict[str, Any]:
    return {
        "changes": fig.changes,
        "records": fig.records,
        "rows_per_s": round(fig.rows_per_s or 0, 1),
        "drain_s": round((fig.last_ms - fig.first_ms) / 1000, 2),
        "p50_ms": fig.quantile(0.5),
        "p99_ms": fig.quantile(0.99),
        "max_ms": fig.latencies_ms[-1] if fig.latencies_ms else None,
    }


def _start(kind: str, bench: Bench, table: str, slot: str, pub: str, prefix: str,
           work: Path, snapshot_mode: str) -> Tool:
    if kind == "ours":
        return Ours(bench, table, slot, pub, prefix, work)
    return Debezium(bench, table, slot, pub, prefix, work, snapshot_mode)


def backlog(bench: Bench, readers: list[str], rows: int, args: argparse_ns) -> dict[str, Any]:
    """Write a backlog of ``rows`` changes once; each reader drains it alone."""
    table = f"{bench.schema}.backlog"
    create_table(bench.dsn, table)
    slots = {}
    for r in readers:
        bench.publication(bench.name(f"pub_{r}"), table)
    # The ceiling readers alternate over several rounds (raw, decode, raw, decode, ...), each
    # on a slot of its own: the first reader of a backlog pays for cold caches, so one round
    # each would compare a cold reader with a warm one.
    rounds = max(1, getattr(args, "ceiling_rounds", 3))
    ceiling = [r for r in readers if r in ("raw", "decode", "server")]
    order = [r for r in readers if r not in ceiling] + [
        f"{r}#{i}" for i in range(rounds) for r in ceiling]
    for r in order:  # every slot exists before the first change is written
        slots[r] = bench.slot(bench.name(f"slot_{r.replace('#', '_')}"))
    log(f"backlog: writing {rows} row changes ({args.mix} ins/upd/del, {args.txn_rows} rows/txn)")
    wl = workload_result(workload(bench, table, "--rows", str(rows), "--txn-rows",
                                  str(args.txn_rows), "--mix", args.mix,
                                  "--row-bytes", str(args.row_bytes)))
    log(f"backlog written: {wl['rows']} rows in {wl['seconds']} s ({wl['rows_per_s']} rows/s)")
    changes = wl["rows"]
    records = changes + wl["ops"]["delete"]  # both tools follow a delete with a tombstone
    out: dict[str, Any] = {"workload": wl, "readers": {}}
    for r in order:
        if "#" in r:
            mode, _, n = r.partition("#")
            log(f"backlog: ceiling ({mode}, round {int(n) + 1} of {rounds})")
            res = run_json([sys.executable, "-m", "bench.ceiling", "--dsn", bench.dsn, "--slot",
                            slots[r], "--publication", bench.name(f"pub_{mode}"),
                            "--changes", str(changes), "--mode", mode])
            log(f"  {mode}: {res['rows_per_s']} rows/s")
            bench.drop_slot(slots[r])
            runs = out["readers"].setdefault(mode, {"rounds": []})["rounds"]
            runs.append(res)
            best = max(runs, key=lambda x: x["rows_per_s"])  # the warmest: the ceiling
            out["readers"][mode] = {**best, "rounds": runs}
            continue
        pub = bench.name(f"pub_{r}")
        prefix = bench.name(f"bk{r[0]}")
        topic = bench.topic(f"{prefix}.{table}")
        log(f"backlog: {r} draining {changes} changes")
        # no_data on a slot that already exists streams from the slot's confirmed position,
        # so Debezium reads the whole backlog (3.6 dropped "never", which did the same).
        tool = _start(r, bench, table, slots[r], pub, prefix, bench.work / f"backlog-{r}",
                      "no_data")
        cpu0 = cpu_seconds(tool.pid)
        t0 = time.monotonic()
        got = wait_topic(bench.bootstrap, topic, records, timeout=1800)
        wall = time.monotonic() - t0
        cpu = cpu_seconds(tool.pid) - cpu0
        mem = proc_status(tool.pid)
        tool.stop()
        bench.drop_slot(slots[r])
        fig = read_topic(bench.bootstrap, topic)
        res = topic_figures(fig)
        res.update({"expected_changes": changes, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
                    "cpu_ms_per_1k_rows": round(1e6 * cpu / max(fig.changes, 1), 1),
                    "peak_rss_mb": round(mem.get("VmHWM", 0) / 1024, 1), "topic": topic})
        if got < records:
            res["warning"] = f"only {got} of {records} records arrived"
        out["readers"][r] = res
        log(f"  {r}: {res['rows_per_s']} rows/s over {res['drain_s']} s, cpu {res['cpu_s']} s")
    return out


def latency(bench: Bench, tools: list[str], rates: list[int], seconds: float,
            args: argparse_ns) -> dict[str, Any]:
    """Commit-to-Kafka latency at fixed offered loads, per tool, one after the other."""
    out: dict[str, Any] = {}
    for rate in rates:
        for kind in tools:
            tag = f"l{kind[0]}{rate}"
            table = f"{bench.schema}.{tag}"
            create_table(bench.dsn, table)
            pub = bench.publication(bench.name(f"pub_{tag}"), table)
            slot = bench.slot(bench.name(f"slot_{tag}"))
            prefix = bench.name(tag)
            topic = bench.topic(f"{prefix}.{table}")
            log(f"latency: {kind} at {rate} rows/s for {seconds:.0f} s")
            tool = _start(kind, bench, table, slot, pub, prefix, bench.work / tag, "no_data")
            warmup = min(10.0, seconds / 4)
            try:
                cpu0 = cpu_seconds(tool.pid)
                since_us = int((time.time() + warmup) * 1e6)
                wl = workload_result(workload(
                    bench, table, "--rate", str(rate), "--duration", str(seconds),
                    "--txn-rows", str(args.txn_rows), "--mix", args.mix,
                    "--row-bytes", str(args.row_bytes)))
                records = wl["rows"] + wl["ops"]["delete"]
                got = wait_topic(bench.bootstrap, topic, records, timeout=120)
                cpu = cpu_seconds(tool.pid) - cpu0
            finally:
                tool.stop()
                bench.drop_slot(slot)
            fig = read_topic(bench.bootstrap, topic, commit_after_us=since_us)
            res = topic_figures(fig)
            res.update({"offered_rows_per_s": rate, "warmup_excluded_s": warmup,
                        "achieved_rows_per_s": wl["rows_per_s"],
                        "workload_max_behind_s": wl["max_behind_s"], "cpu_s": round(cpu, 1),
                        "cpu_pct": round(100 * cpu / wl["seconds"], 1)})
            if got < records:
                res["warning"] = f"only {got} of {records} records arrived"
            out.setdefault(str(rate), {})[kind] = res
            log(f"  {kind}@{rate}: p50 {res['p50_ms']} ms p99 {res['p99_ms']} ms, "
                f"cpu {res['cpu_pct']} %")
    return out


argparse_ns = Any
