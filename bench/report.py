"""The printed table, ``bench/results.json`` (latest figures per section, merged across runs)
and ``bench/RESULTS.md`` rendered from it. Hand-written notes below the marker line in
RESULTS.md are kept when it is rewritten."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bench.debezium import CONNECTOR_TUNING, DEBEZIUM_VERSION, KAFKA_VERSION, PRODUCER
from pipeline.stack.kafka import VERSION as BROKER_VERSION

HERE = Path(__file__).resolve().parent
RESULTS_JSON = HERE / "results.json"
RESULTS_MD = HERE / "RESULTS.md"
NOTES_MARKER = "<!-- notes: everything below this line is kept when the file is rewritten -->"


def _f(x: Any, digits: int = 0) -> str:
    if x is None:
        return "-"
    if isinstance(x, float | int):
        return f"{x:,.{digits}f}"
    return str(x)


def _ratio(a: Any, b: Any) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, value, note) rows for the table, from whichever sections are present."""
    out: list[tuple[str, str, str]] = []
    bk = results.get("backlog")
    if bk:
        r = bk["readers"]
        n = bk["workload"]["rows"]
        for name, label in (("ours", "capture (ours)"), ("debezium", "Debezium"),
                            ("raw", "slot read+discard"), ("decode", "slot + our decoder"),
                            ("server", "slot decoded in the server")):
            if name in r:
                x = r[name]
                extra = ""
                if "cpu_ms_per_1k_rows" in x:
                    extra = (f"{x['drain_s']} s drain, {x['cpu_ms_per_1k_rows']} CPU-ms/1k rows, "
                             f"peak RSS {x['peak_rss_mb']} MB")
                else:
                    extra = f"{x['seconds']} s"
                    if x.get("messages_per_wait"):
                        extra += f", {_f(x['messages_per_wait'])} messages per wait for the server"
                    if len(x.get("rounds", [])) > 1:
                        each = ", ".join(_f(y["rows_per_s"]) for y in x["rounds"])
                        extra += f" (best of {len(x['rounds'])} alternating rounds: {each})"
                out.append((f"backlog {n:,} rows: {label}", f"{_f(x['rows_per_s'])} rows/s",
                            extra))
        if "ours" in r and "debezium" in r:
            out.append(("throughput ours/Debezium",
                        _ratio(r["ours"]["rows_per_s"], r["debezium"]["rows_per_s"]),
                        "target >= 3x"))
        slot_readers = [r[m] for m in ("raw", "decode", "server") if m in r]
        if "ours" in r and slot_readers:
            # The ceiling is the fastest any reader drained the slot: a reader that decodes
            # as well (and discards) has been faster than one that does not (see waits).
            top = max(slot_readers, key=lambda x: x["rows_per_s"])
            out.append(("ours / slot ceiling",
                        f"{100 * r['ours']['rows_per_s'] / top['rows_per_s']:.0f} %",
                        f"of {_f(top['rows_per_s'])} rows/s ({top['mode']} reader)"))
    for rate, tools in (results.get("latency") or {}).items():
        for name, x in tools.items():
            out.append((f"commit->Kafka @{int(rate):,}/s: {name}",
                        f"p50 {_f(x['p50_ms'])} ms, p99 {_f(x['p99_ms'])} ms",
                        f"{x['changes']:,} changes, CPU {x['cpu_pct']} %"
                        + (f" ({x['warning']})" if "warning" in x else "")))
        if "ours" in tools and "debezium" in tools:
            out.append((f"p99 ours/Debezium @{int(rate):,}/s",
                        _ratio(tools["ours"]["p99_ms"], tools["debezium"]["p99_ms"]),
                        "lower is better; target < 1"))
    w = results.get("worker")
    if w:
        for sink in ("search", "cache"):
            x = w.get(sink)
            if not x:
                continue
            for name in ("faust", "kafka_engine", "bare", "faust_no_dedup", "bare_no_dedup"):
                y = x.get(name)
                if not y:
                    continue
                rounds = y.get("rounds_events_per_s", [])
                each = (f"; median of {len(rounds)} rounds: " + ", ".join(_f(r) for r in rounds)
                        if len(rounds) > 1 else "")
                out.append((f"worker {sink} sink, {name}", f"{_f(y['events_per_s'])} events/s",
                            f"{y['events']:,} events in {y['seconds']} s, CPU {y.get('cpu_s')} s"
                            + each))
            out.append((f"faust overhead, {sink} (bare/faust)",
                        _ratio(x["bare"]["events_per_s"], x["faust"]["events_per_s"]),
                        "target <= 1.5x; worker target >= 20,000 events/s (cache)"))
            if "kafka_engine" in x:
                out.append((f"faust engine / kafka engine, {sink}",
                            _ratio(x["faust"]["events_per_s"], x["kafka_engine"]["events_per_s"]),
                            "target >= 0.8x; same processing and guarantees"))
            if "faust_no_dedup" in x and "bare_no_dedup" in x:
                out.append((f"faust overhead, {sink}, dedup off (bare/faust)",
                            _ratio(x["bare_no_dedup"]["events_per_s"],
                                   x["faust_no_dedup"]["events_per_s"]), ""))
    out += search_rows(results)
    e = results.get("e2e")
    if e:
        for sink, x in e.get("sinks", {}).items():
            out.append((f"commit->{sink} @{e['offered_rows_per_s']:,}/s",
                        f"p50 {_f(x['p50_ms'])} ms, p99 {_f(x['p99_ms'])} ms",
                        f"{x['count']:,} events"))
    m = results.get("memory")
    if m:
        for proc, x in (m.get("long") or {}).get("rss_by_progress", {}).items():
            if x:
                marks = ", ".join(str(x.get(f"rss_mb_at_{q}pct_read", "?"))
                                  for q in (25, 50, 75, 100))
                out.append((f"memory long: {proc}, RSS at 25/50/75/100 % read",
                            f"{marks} MB",
                            f"growth 25->100 %: {x.get('growth_25_to_100_pct', '?')} % "
                            f"(target within 10 %), {m['long']['records']:,} records"))
        for run in ("long", "big_txn"):
            for proc, x in (m.get(run) or {}).get("rss", {}).items():
                if x:
                    out.append((f"memory {run}: {proc}", f"peak {x['hwm_mb']} MB",
                                f"RSS {x['rss_mb_at_25pct']} MB at 25% -> {x['rss_mb_at_end']} MB "
                                f"at end"))
    out += snapshot_rows(results)
    out += mariadb_rows(results)
    out += mariadb_latency_rows(results)
    out += strategy_rows(results)
    out += tune_rows(results)
    return out


def tune_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows of the ``tune`` section: measured against the model, per load and stage."""
    t = results.get("tune")
    if not t:
        return []
    out: list[tuple[str, str, str]] = []
    for row in t["comparison"]:
        other = [r for r in t["rates"] if r != row["load"]][0]

        def pct(x: Any) -> str:
            return "-" if x is None else f"{100 * x:.0f} %"

        out.append((f"tune @{row['load']:,}/s ({_f(row['changes_per_s'])} measured): "
                    f"{row['stage']}",
                    f"p99 measured {_f(row['p99_measured_ms'])} ms / model "
                    f"{_f(row['p99_model_ms'])} ms / predicted from @{other:,}/s "
                    f"{_f(row['p99_predicted_ms'])} ms",
                    f"busy measured {pct(row['busy_measured'])} / model "
                    f"{pct(row['busy_model'])} / predicted {pct(row['busy_predicted'])}"))
    for rate, level in t["levels"].items():
        rec = level["tune"]["recommendation"]
        first = level["tune"]["saturates_first"]
        out.append((f"tune @{int(rate):,}/s: advice for p99 <= {_f(rec['target_p99_ms'])} ms "
                    f"at @{_f(level['tune']['rate'])}/s",
                    f"partitions {rec['partitions']}, batch {rec['batch_size']}/"
                    f"{_f(rec['batch_wait_ms'])} ms, workers "
                    + ", ".join(f"{n} {s['workers']}" for n, s in rec["sinks"].items()),
                    f"{'met' if rec['met'] else 'not met'}; saturates first: {first['stage']} "
                    f"at ~{_f(first['changes_per_s'])} changes/s; load avg "
                    f"{level['load_avg']:.1f}"))
    return out


def search_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    x = results.get("search")
    if not x:
        return []
    out = []
    for label, y in x["ceiling"].items():
        if isinstance(y, dict):
            out.append((f"Elasticsearch bulk ceiling, {label.replace('_', ' ')}",
                        f"{_f(y['events_per_s'])} events/s",
                        f"{y['documents']:,} documents (one per row per batch of "
                        f"{x['ceiling']['batch']}) in {y['seconds']} s, pre-built, no pipeline"
                        + _cpu_detail(y.get("cpu"), y.get("elasticsearch_cpu_us_per_doc"),
                                      "doc")))
    for engine in ("kafka", "faust"):
        y = x.get(f"worker_{engine}")
        if y:
            out.append((f"search worker, {engine} engine", f"{_f(y['events_per_s'])} events/s",
                        f"{y['events']:,} events in {y['seconds']} s, CPU {y.get('cpu_s')} s; "
                        f"{y.get('ratio_to_ceiling')}x the ceiling (target >= 0.8x)"
                        + _cpu_detail(y.get("cpu"), y.get("elasticsearch_cpu_us_per_event"),
                                      "event", y.get("worker_cpu_us_per_event"))))
    p = x.get("profile_kafka_engine")
    if p and "samples" in p:
        top = ", ".join(f"{f} {n} %" for f, n in p.get("top_ours_inclusive_pct", [])[:4])
        out.append(("search worker (kafka engine) under py-spy --idle",
                    f"{p.get('waiting_on_socket_pct')} % waiting on Elasticsearch",
                    f"{p.get('in_kafka_consumer_pct')} % in the Kafka consumer, "
                    f"{p.get('working_pct')} % working; ours (inclusive): {top}"))
    return out


def _cpu_detail(cpu: dict[str, Any] | None, es_us: float | None, per: str,
                worker_us: float | None = None) -> str:
    """Where the machine's CPU went in one phase of ``bench search`` (empty if unknown)."""
    if not cpu:
        return ""
    ours = f", worker {worker_us} us/{per}" if worker_us is not None else ""
    rest = f", rest of the box {cpu['rest_cpu_s']} CPU-s" if "rest_cpu_s" in cpu else ""
    return (f"; Elasticsearch {es_us} us CPU/{per} ({cpu['elasticsearch_cores']} cores)"
            f"{ours}; machine busy {cpu['machine_busy_cores']} cores{rest}")


def mariadb_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows of the ``mariadb`` section (binlog backlog, ours and Debezium's connector)."""
    out: list[tuple[str, str, str]] = []
    m = results.get("mariadb")
    if not m:
        return out
    n = m.get("workload", {}).get("rows", 0)
    r = m.get("readers", {})
    for name, label in (("ours", "capture (ours)"), ("debezium", "Debezium MariaDB")):
        if name in r:
            x = r[name]
            out.append((f"MariaDB backlog {n:,} changes: {label}",
                        f"{_f(x['changes_per_s'])} changes/s",
                        f"{x['drain_s']} s drain, {x['cpu_ms_per_1k_changes']} CPU-ms/1k "
                        f"changes, peak RSS {x['peak_rss_mb']} MB"
                        + (f" ({x['warning']})" if "warning" in x else "")))
        elif name in m.get("errors", {}):
            out.append((f"MariaDB backlog: {label}", "did not run",
                        m["errors"][name].splitlines()[0][:200]))
    if "ours" in r and "debezium" in r:
        out.append(("MariaDB throughput ours/Debezium",
                    _ratio(r["ours"]["changes_per_s"], r["debezium"]["changes_per_s"]), ""))
    return out


def mariadb_latency_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows of the ``mariadb_latency`` section (commit -> Kafka at a fixed load)."""
    out: list[tuple[str, str, str]] = []
    for name, label in (("ours", "capture (ours)"), ("debezium", "Debezium MariaDB")):
        x = (results.get("mariadb_latency") or {}).get(name)
        if x is None:
            continue
        out.append((f"MariaDB commit->Kafka p99 at {x['offered_changes_per_s']:,} changes/s: "
                    f"{label}", f"{_f(x['p99_ms'])} ms",
                    f"p50 {_f(x['p50_ms'])} ms, max {_f(x['max_ms'])} ms over "
                    f"{x['measured_changes']:,} changes (achieved "
                    f"{_f(x['achieved_changes_per_s'])}/s), CPU {x['cpu_pct']} %, RSS "
                    f"{x['rss_mb']} MB; p50 per 10 s of commits "
                    f"{x.get('p50_ms_per_10s_of_commits', '?')} ms"
                    + (f" ({x['warning']})" if "warning" in x else "")))
    return out


#: How the ``strategies`` section names each strategy and writer configuration.
STRATEGY_LABELS = {"logical": "log-based (logical)", "triggers": "triggers",
                   "polling": "polling", "outbox": "outbox relay"}
WRITER_LABELS = {"plain": "plain table", "triggers": "+ capture triggers",
                 "polling": "+ polling index and created_at",
                 "outbox_txn": "+ 1 outbox event per transaction",
                 "outbox": "+ 1 outbox event per changed row"}


def strategy_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows of the ``strategies`` section: drain, latency and CPU per capture strategy, and
    the writer's transactions/s with each installed."""
    s = results.get("strategies")
    if not s:
        return []
    out: list[tuple[str, str, str]] = []
    poll = s.get("polling", {})
    labels = {**STRATEGY_LABELS, "polling": f"polling (lag {poll.get('safety_lag_s')} s, "
                                            f"every {poll.get('interval_s')} s)"}
    for kind, x in s.get("drain", {}).items():
        name = f"drain {s['backlog_changes']:,}-change backlog: {labels.get(kind, kind)}"
        if "error" in x:
            out.append((name, "failed", x["error"]))
            continue
        out.append((name, f"{_f(x['rows_per_s'])} changes/s",
                    f"{x['changes']:,} published of {x['changes_written']:,} written, "
                    f"{x['drain_s']} s, {x['cpu_ms_per_1k_changes']} CPU-ms/1k changes "
                    f"published, peak RSS {x['peak_rss_mb']} MB; backlog written at "
                    f"{_f(x['workload']['rows_per_s'])} changes/s"
                    + (f" ({x['warning']})" if "warning" in x else "")))
    for kind, x in s.get("latency", {}).items():
        name = f"commit->Kafka @{s['offered_rows_per_s']:,}/s: {labels.get(kind, kind)}"
        if "error" in x:
            out.append((name, "failed", x["error"]))
            continue
        out.append((name, f"p50 {_f(x['p50_ms'])} ms, p99 {_f(x['p99_ms'])} ms",
                    f"{x['changes']:,} changes measured, capture CPU {x['cpu_pct']} % "
                    f"({_f(1e6 * x['cpu_s'] / max(x['changes_written'], 1), 1)} CPU-ms/1k "
                    f"changes written)" + (f" ({x['warning']})" if "warning" in x else "")))
    w = s.get("writer") or {}
    if "error" in w:
        out.append(("writer transactions/s", "failed", w["error"]))
    for key, label in WRITER_LABELS.items():
        x = w.get(key)
        if x:
            rounds = ", ".join(_f(t) for t in x["rounds_txn_per_s"])
            out.append((f"writer txn/s, {label}", f"{_f(x['txn_per_s'])} txn/s",
                        f"{_f(x['vs_plain'], 2)}x of plain; {_f(x['rows_per_s'])} rows/s; "
                        f"median of {rounds}"))
    return out


def _servers(run: dict[str, Any]) -> str:
    """The reader's threads' CPU, and the Kafka broker's and PostgreSQL's over a run, when
    measured."""
    threads = run.get("threads_cpu_ms_per_1k_rows") or {}
    mine = (" (threads: " + ", ".join(f"{k} {v}" for k, v in sorted(
        threads.items(), key=lambda kv: -kv[1])) + ")") if threads else ""
    if "kafka_cpu_ms_per_1k_rows" not in run:
        return mine
    return (f"{mine}; Kafka broker {run['kafka_cpu_ms_per_1k_rows']}, PostgreSQL "
            f"{run['postgres_cpu_ms_per_1k_rows']} CPU-ms/1k rows, machine "
            f"{run['machine_busy_cores']} cores busy over the run, start-up included")


def _rounds(run: dict[str, Any], rate: str) -> str:
    """``; median of a, b, c`` when the run stands for several rounds."""
    rates = run.get(f"rounds_{rate}") or []
    return f"; median of {', '.join(_f(r) for r in rates)}" if len(rates) > 1 else ""


def snapshot_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows of the ``snapshot`` and ``backfill_latency`` sections."""
    out: list[tuple[str, str, str]] = []
    s = results.get("snapshot")
    for x in ((s or {}).get("tables") or {}).values():
        n = f"snapshot {x['rows']:,} rows of ~{x['row_bytes']:,} B"
        runs = [(f"ours, chunk {y['chunk_size']}, {y.get('readers', 1)} reader(s)", y)
                for y in x["ours"].values()]
        runs += [("Debezium", x["debezium"])] if "debezium" in x else []
        for label, y in runs:
            out.append((f"{n}: {label}", f"{_f(y.get('rows_per_s'))} rows/s",
                        f"{_f(y.get('rows_per_s_from_start'))} rows/s from process start, "
                        f"{y['cpu_ms_per_1k_rows']} CPU-ms/1k rows, peak RSS "
                        f"{y['peak_rss_mb']} MB" + _servers(y) + _rounds(y, "rows_per_s")
                        + (f" ({y['warning']})" if "warning" in y else "")))
        if "debezium" in x and x["ours"]:
            best = max(x["ours"].values(), key=lambda y: y.get("rows_per_s") or 0)
            out.append((f"{n}: ours (best: chunk {best['chunk_size']}, "
                        f"{best.get('readers', 1)} reader(s)) / Debezium",
                        _ratio(best.get("rows_per_s"), x["debezium"].get("rows_per_s")),
                        "rows/s; target >= 3x"))
            first = next(iter(x["ours"].values()))
            if len(first.get("rounds_rows_per_s") or []) > 1:
                out.append((f"{n}: ours (chunk {first['chunk_size']}, 1 reader) / Debezium, "
                            f"median rounds", _ratio(first.get("rows_per_s"),
                                                     x["debezium"].get("rows_per_s")),
                            "rows/s, the same rounds in turn; target >= 3x"))
    if s and "small" in s:
        y = s["small"]["ours"]
        out.append((f"snapshot {s['small']['rows']:,} rows of ~200 B: ours, chunk "
                    f"{y['chunk_size']}", f"{_f(y.get('rows_per_s'))} rows/s",
                    f"peak RSS {y['peak_rss_mb']} MB (against table size)"))
    b = results.get("backfill_latency")
    if b:
        for phase in ("without", "with"):
            y = b.get(phase)
            if y:
                out.append((f"commit->Kafka @{b['offered_rows_per_s']:,}/s, {phase} backfill",
                            f"p50 {_f(y['p50_ms'])} ms, p99 {_f(y['p99_ms'])} ms",
                            f"{y['changes']:,} changes, capture CPU {y['cpu_pct']} %"
                            + (f", {y['measured_s']} s measured" if "measured_s" in y else "")
                            + (f" ({y['warning']})" if "warning" in y else "")))
        out.append(("p99 with / without backfill", _ratio(b["with"]["p99_ms"],
                                                            b["without"]["p99_ms"])
                    if "with" in b else "-", "target <= 2x"))
        bf = b.get("backfill") or {}
        out.append((f"backfill of {b['backfill_rows']:,} rows (chunk {b['chunk_size']})",
                    f"{_f(bf.get('rows_per_s'))} rows/s",
                    f"{bf.get('first_to_last_s')} s first to last row, "
                    f"{bf.get('requested_to_done_s')} s from the request"
                    + (f" ({bf['warning']})" if "warning" in bf else "")))
    return out


def table(results: dict[str, Any]) -> str:
    data = rows(results)
    if not data:
        return "(no figures)"
    w0 = max(len(r[0]) for r in data)
    w1 = max(len(r[1]) for r in data)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in data)


def save(results: dict[str, Any], meta: dict[str, Any]) -> None:
    stored: dict[str, Any] = {}
    if RESULTS_JSON.exists():
        stored = json.loads(RESULTS_JSON.read_text())
    for section, figures in results.items():
        stored[section] = {"result": figures, "meta": meta}
    RESULTS_JSON.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    RESULTS_MD.write_text(render(stored))


def render(stored: dict[str, Any]) -> str:
    notes = ""
    if RESULTS_MD.exists():
        text = RESULTS_MD.read_text()
        if NOTES_MARKER in text:
            notes = text.split(NOTES_MARKER, 1)[1]
    metas = [s["meta"] for s in stored.values()]
    latest = max(metas, key=lambda m: m["started"])
    mach = latest["machine"]
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python -m bench` (see `bench/README.md`); figures from the runs listed per",
        "section. This machine is shared and noisy: read the **ratios measured in the same run**",
        "(ours/Debezium, bare/faust, ours/ceiling) rather than the absolute numbers.",
        "",
        "## Machine and versions",
        "",
        f"- CPU: {mach['cpu']}, {mach['nproc']} CPUs visible (`nproc`), "
        f"{mach['memory_gb']} GB RAM, kernel {mach['kernel']}",
        "- Everything on this one machine: PostgreSQL, Kafka (1 broker), Elasticsearch, Redis,",
        "  the tool under test, the workload generator. Load average at the start of the latest",
        f"  run: {mach['loadavg_at_start']} (other people's tests run here too).",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(mach["versions"].items()))
        + f", Kafka {BROKER_VERSION} (KRaft), Debezium {DEBEZIUM_VERSION} on Kafka Connect "
        f"{KAFKA_VERSION} standalone, Java 17.",
        "",
        "## Settings",
        "",
        "- Topics: 3 partitions, replication factor 1, `message.timestamp.type=LogAppendTime`",
        "  (created by the bench for both tools).",
        "- Producer, both tools (ours: `pipeline/capture/publisher.py` defaults; Debezium: Connect",
        "  worker `producer.*`): " + ", ".join(f"`{k}={v}`" for k, v in PRODUCER.items()) + ".",
        "- Debezium connector: `plugin.name=pgoutput`, own slot and publication (created by the",
        "  bench before the workload, `publication.autocreate.mode=filtered`), `tasks.max=1`,",
        "  `snapshot.mode=no_data` (on the backlog's existing slot it streams from the slot's",
        "  start), `decimal.handling.mode=string`, JsonConverter key/value with",
        "  `schemas.enable=false`, `offset.flush.interval.ms=1000`, JVM `-Xmx1g -XX:+UseG1GC`;",
        "  " + ", ".join(f"`{k}={v}`" for k, v in CONNECTOR_TUNING.items())
        + " (defaults 500, 2048, 8192: with the default poll interval its p50 was ~500 ms).",
        "- Workload: separate process, one connection; each transaction = one multi-row INSERT +",
        "  one UPDATE + one DELETE on random live rows, mix and size below; table",
        "  `(id bigint pk, name text, qty int, price numeric(12,2), payload text, updated_at",
        "  timestamptz)`.",
        "",
    ]
    for section, title in (("backlog", "Capture throughput: draining one backlog"),
                           ("latency", "Commit-to-Kafka latency at fixed offered loads"),
                           ("worker", "Worker throughput and faust overhead"),
                           ("e2e", "End to end: commit -> indexed / invalidated"),
                           ("memory", "Memory"),
                           ("search", "Search worker against the Elasticsearch bulk ceiling"),
                           ("snapshot", "Initial snapshot into Kafka"),
                           ("backfill_latency",
                            "Commit-to-Kafka latency with an incremental backfill running"),
                           ("mariadb", "MariaDB binlog -> Kafka: draining one backlog"),
                           ("mariadb_latency",
                            "MariaDB commit -> Kafka latency at a fixed offered load"),
                           ("strategies", "Capture strategies: log-based, triggers, polling, "
                                          "outbox relay"),
                           ("tune", "cdc tune: the queueing model against measurement")):
        if section not in stored:
            continue
        res, meta = stored[section]["result"], stored[section]["meta"]
        s = meta["settings"]
        lines += [f"## {title}", "",
                  f"Run {meta['started']} ({'quick' if meta['quick'] else 'full'} mode"
                  + (f", code at {meta['machine']['git']}" if meta["machine"].get("git") else "")
                  + "), "
                  f"reproduce with `{meta['command']}` (whole run took {meta['minutes']} min).",
                  f"Workload: mix ins/upd/del {s['mix']} %, {s['txn_rows']} rows per transaction, "
                  f"~{s['row_bytes']} bytes per row.", "", "| figure | value | detail |",
                  "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in rows({section: res})]
        lines += ["", "<details><summary>raw figures</summary>", "", "```json",
                  json.dumps(res, indent=1)[:6000], "```", "</details>", ""]
    lines += [f"_Rendered {time.strftime('%Y-%m-%d %H:%M:%S')}._", "", NOTES_MARKER]
    return "\n".join(lines) + (notes if notes else "\n")
