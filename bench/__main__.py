"""``python -m bench [parts...] [--duration S] [--quick]``: run benchmark parts, print a
table, merge the figures into ``bench/results.json`` and rewrite ``bench/RESULTS.md``.

Parts: capture, debezium, ceiling (one shared backlog, drained by each reader in turn, plus
commit-to-Kafka latency at fixed loads), worker, e2e, memory, snapshot (initial snapshot into
Kafka, ours and Debezium), backfill-latency (commit-to-Kafka latency with and without an
incremental backfill running), mariadb (a MariaDB binlog backlog drained by ours and by
Debezium's MariaDB connector, and commit-to-Kafka latency at --mariadb-rate), strategies
(every capture strategy: log-based, triggers, polling, outbox relay: drain, latency, CPU,
and the cost to the writer), tune (``cdc tune``'s model against measurement at two loads),
search (the Elasticsearch bulk ceiling of this machine and the search worker against it,
same topic, same run). No part given = all of them.

``python -m bench compat [--json out.json]`` is separate: Debezium and our capture over the
same WAL of every PostgreSQL type, and the table of where their events differ
(``python -m bench compat --help``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import report
from bench.common import Bench, log, machine

PARTS = ("capture", "debezium", "ceiling", "worker", "e2e", "memory", "snapshot",
         "backfill-latency", "mariadb", "strategies", "tune", "search")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("parts", nargs="*", metavar="part",
                   help=f"any of {', '.join(PARTS)} (default: all)")
    p.add_argument("--quick", action="store_true",
                   help="small backlogs and short runs (minutes, not tens of minutes)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds per fixed-load run (default 60, quick 15)")
    p.add_argument("--ceiling-rounds", type=int, default=3,
                   help="ceiling: rounds of raw, decode readers, alternating (best reported)")
    p.add_argument("--backlog-rows", type=int, default=None,
                   help="row changes in the capture backlog (default 2,000,000; quick 100,000)")
    p.add_argument("--worker-events", type=int, default=None,
                   help="events pre-filled for the worker part (default 300,000; quick 50,000)")
    p.add_argument("--worker-rounds", type=int, default=None,
                   help="worker part: rounds per engine, the engines' order rotated each round; "
                        "the median round counts (default 3; quick 1)")
    p.add_argument("--worker-sinks", default="search,cache",
                   help="worker part: the sinks measured, comma separated")
    p.add_argument("--worker-no-dedup", action="store_true",
                   help="worker part: also run faust and the bare loop with dedup off")
    p.add_argument("--search-batch", type=int, default=500,
                   help="search part: events per partition in each of the ceiling's _bulk "
                        "bodies (default 500: about what a worker batch of 2,000 gives each "
                        "of 3 partitions' drains)")
    p.add_argument("--search-profile", action="store_true",
                   help="search part: one more (unmeasured) kafka-engine drain under py-spy")
    p.add_argument("--memory-events", type=int, default=None,
                   help="events in the long memory run (default 1,000,000; quick 100,000)")
    p.add_argument("--memory-workers", default="faust:rocksdb://,kafka:rocksdb://",
                   help="worker configurations in the long memory run, engine:store, comma "
                        "separated; each runs one worker per sink at the same time")
    p.add_argument("--memory-prefill", action="store_true",
                   help="memory part: capture fills the topic first, then the workers drain it "
                        "alone (capture and the workload no longer share the cores with them)")
    p.add_argument("--memory-sinks", default="search,cache",
                   help="sinks with a worker per configuration in the long memory run")
    p.add_argument("--big-txn-rows", type=int, default=None,
                   help="rows in the one big transaction (default 1,000,000; quick 100,000; "
                        "0 skips it)")
    p.add_argument("--rates", default="2000,5000", help="offered loads for latency, rows/s")
    p.add_argument("--no-backlog", action="store_true",
                   help="skip the backlog drain (e.g. to re-measure latency only)")
    p.add_argument("--e2e-rate", type=int, default=1000, help="offered load for e2e, rows/s")
    p.add_argument("--mix", default="70,20,10", help="insert,update,delete percentages")
    p.add_argument("--txn-rows", type=int, default=50, help="rows per transaction")
    p.add_argument("--row-bytes", type=int, default=200, help="approximate row size")
    p.add_argument("--snapshot-rows", type=int, default=None,
                   help="rows of the ~200-byte snapshot table, also the table backfilled by "
                        "backfill-latency (default 2,000,000; quick 100,000)")
    p.add_argument("--wide-rows", type=int, default=None,
                   help="rows of the ~4 KB (TOASTed) snapshot table (default 200,000; "
                        "quick 10,000)")
    p.add_argument("--snapshot-chunk-sizes", default="2048,16384",
                   help="our postgres.snapshot_chunk_size values to run, comma separated "
                        "(the first also for the small table and the profile)")
    p.add_argument("--snapshot-rounds", type=int, default=None,
                   help="snapshot part: rounds of ours (first chunk size, one reader) and "
                        "Debezium in turn on each table, the median round counts (default 3; "
                        "quick 1)")
    p.add_argument("--snapshot-readers", default="1,2",
                   help="our postgres.snapshot_readers values to run at the first chunk size, "
                        "comma separated (default 1,2)")
    p.add_argument("--snapshot-profile", action="store_true",
                   help="snapshot part: one more (unmeasured) run of ours per table under "
                        "py-spy")
    p.add_argument("--backfill-rate", type=int, default=2000,
                   help="offered load for backfill-latency, rows/s")
    p.add_argument("--backfill-chunk-size", type=int, default=2048,
                   help="cdc snapshot start --chunk-size in backfill-latency")
    p.add_argument("--mariadb-rows", type=int, default=None,
                   help="row changes in the MariaDB binlog backlog (default 1,000,000; "
                        "quick 100,000; 0: skip the backlog)")
    p.add_argument("--mariadb-rate", type=int, default=2000,
                   help="mariadb: offered load for commit-to-Kafka latency, changes/s "
                        "(0: skip; runs for --duration seconds per tool)")
    p.add_argument("--strategy-rows", type=int, default=None,
                   help="strategies: changes in each strategy's backlog (default 200,000; "
                        "quick 20,000)")
    p.add_argument("--strategy-rate", type=int, default=1000,
                   help="strategies: offered load for latency, changes/s")
    p.add_argument("--strategy-seconds", type=float, default=None,
                   help="strategies: seconds per latency run (default --duration)")
    p.add_argument("--writer-rounds", type=int, default=5,
                   help="strategies: alternating rounds of the writer-cost runs")
    p.add_argument("--writer-seconds", type=float, default=None,
                   help="strategies: seconds per writer-cost run (default 10, quick 3)")
    p.add_argument("--tune-rates", default="200,1000",
                   help="tune: the two offered loads, changes/s")
    p.add_argument("--tune-seconds", type=float, default=None,
                   help="tune: seconds per load (default --duration, at least 20)")
    p.add_argument("--tune-target-ms", type=float, default=1000.0,
                   help="tune: the p99 freshness target given to cdc tune")
    p.add_argument("--keep", action="store_true", help="keep slots, topics and the schema")
    p.add_argument("--no-write", action="store_true", help="do not touch results.json/RESULTS.md")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compat"]:  # a report, not a benchmark part: its own options and output
        from bench import compat

        return compat.main(argv[1:])
    args = build_parser().parse_args(argv)
    parts = list(dict.fromkeys(args.parts)) or list(PARTS)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        build_parser().error(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    bad_sinks = [s for s in args.worker_sinks.split(",") if s not in ("search", "cache")]
    if bad_sinks:
        build_parser().error(f"unknown --worker-sinks {bad_sinks}; choose from search, cache")
    q = args.quick
    args.duration = args.duration or (15.0 if q else 60.0)
    args.backlog_rows = args.backlog_rows or (100_000 if q else 2_000_000)
    args.worker_events = args.worker_events or (50_000 if q else 300_000)
    args.worker_rounds = args.worker_rounds or (1 if q else 3)
    args.memory_events = args.memory_events or (100_000 if q else 1_000_000)
    if args.big_txn_rows is None:  # 0: skip the big transaction
        args.big_txn_rows = 100_000 if q else 1_000_000
    args.snapshot_rows = args.snapshot_rows or (100_000 if q else 2_000_000)
    args.wide_rows = args.wide_rows or (10_000 if q else 200_000)
    args.snapshot_rounds = args.snapshot_rounds or (1 if q else 3)
    if args.mariadb_rows is None:  # 0: latency only
        args.mariadb_rows = 100_000 if q else 1_000_000
    args.strategy_rows = args.strategy_rows or (20_000 if q else 200_000)
    args.strategy_seconds = args.strategy_seconds or args.duration
    args.writer_seconds = args.writer_seconds or (3.0 if q else 10.0)
    args.tune_seconds = max(args.tune_seconds or args.duration, 20.0)
    command = "python -m bench " + shlex.join(argv)
    work = Path(tempfile.mkdtemp(prefix="cdc-bench-"))
    # The mariadb part alone needs no Elasticsearch or Redis.
    services = ("postgres", "kafka", "mariadb") if parts == ["mariadb"] else None
    bench = Bench(quick=q, duration=args.duration, work=work, services=services)
    log(f"bench run {bench.uid}: parts {parts}, work folder {work}")
    results: dict[str, Any] = {}
    started = time.time()
    mach = machine()
    mach["git"] = git_state()

    def save(section: dict[str, Any]) -> None:
        """Store each section as soon as it is measured: a later failure loses nothing."""
        results.update(section)
        meta = {"command": command, "uid": bench.uid, "quick": q,
                "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
                "minutes": round((time.time() - started) / 60, 1), "machine": mach,
                "settings": {k: v for k, v in vars(args).items() if k not in ("parts", "keep")}}
        if not args.no_write:
            report.save(section, meta)

    failed = False
    try:
        failed = run_parts(bench, parts, args, save)
    finally:
        if not args.keep:
            bench.cleanup()
    print(report.table(results))
    if not args.no_write:
        log(f"wrote {report.RESULTS_JSON} and {report.RESULTS_MD}")
    return 1 if failed else 0


def git_state() -> str:
    """The commit measured, and whether pipeline/ or agents/ had uncommitted changes."""
    import subprocess

    def git(*a: str) -> str:
        out = subprocess.run(["git", *a], capture_output=True, text=True, cwd=report.HERE.parent)
        return out.stdout.strip()

    dirty = git("status", "--porcelain", "--", "pipeline", "agents")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty else "")


def run_parts(bench: Bench, parts: list[str], args: argparse.Namespace,
              save: Callable[[dict[str, Any]], None]) -> bool:
    """Run the parts in order, saving each section; a failing section is logged and the
    next one still runs. Returns True if any failed."""
    failed = False
    for name, measure in sections(bench, parts, args):
        try:
            save({name: measure()})
        except Exception:  # noqa: BLE001 - report and go on with the other parts
            log(f"section {name} failed:\n{traceback.format_exc()}")
            failed = True
    return failed


def sections(bench: Bench, parts: list[str],
             args: argparse.Namespace) -> list[tuple[str, Callable[[], Any]]]:
    from bench import capture, memory, snapshot, strategies, worker

    out: list[tuple[str, Callable[[], Any]]] = []
    readers = [r for p, r in (("capture", "ours"), ("debezium", "debezium")) if p in parts]
    if "ceiling" in parts:
        readers += ["raw", "decode", "server"]
    if readers and not args.no_backlog:
        out.append(("backlog", lambda: capture.backlog(bench, readers, args.backlog_rows, args)))
    tools = [r for r in readers if r in ("ours", "debezium")]
    rates = [int(r) for r in args.rates.split(",") if r]
    if tools and rates:  # --rates "" skips the latency runs
        out.append(("latency", lambda: capture.latency(bench, tools, rates, args.duration,
                                                       args)))
    if "worker" in parts:
        out.append(("worker", lambda: worker.throughput(bench, args)))
    if "e2e" in parts:
        out.append(("e2e", lambda: worker.end_to_end(bench, args)))
    if "memory" in parts:
        out.append(("memory", lambda: memory.run(bench, args)))
    if "search" in parts:
        from bench import search_ceiling

        out.append(("search", lambda: search_ceiling.run(bench, args)))
    if "snapshot" in parts:
        out.append(("snapshot", lambda: snapshot.run(bench, args)))
    if "mariadb" in parts:
        from bench import mariadb

        if args.mariadb_rows:
            out.append(("mariadb", lambda: mariadb.run(bench, args.mariadb_rows,
                                                       args.txn_rows, args.row_bytes)))
        if args.mariadb_rate:
            out.append(("mariadb_latency", lambda: mariadb.latency(
                bench, args.mariadb_rate, args.duration, args.txn_rows, args.row_bytes)))
    if "backfill-latency" in parts:
        out.append(("backfill_latency", lambda: snapshot.backfill_latency(bench, args)))
    if "strategies" in parts:
        out.append(("strategies", lambda: strategies.run(bench, args)))
    if "tune" in parts:
        from bench import tune

        out.append(("tune", lambda: tune.run(bench, args)))
    return out


if __name__ == "__main__":
    sys.exit(main())
