"""``python -m bench compat``: Debezium and our capture side by side on every PostgreSQL type.

One fresh schema (``compat_<uid>``) gets a table per type family (``bench/compat_workload.py``)
and one publication and one slot per tool, all created before the workload writes, so both
tools read exactly the same WAL. Then each tool drains its slot alone (Debezium first, on
Kafka Connect standalone with ``snapshot.mode=no_data``; then ``cdc capture``), until the
end-marker row has arrived and its topics have stopped growing. Both sets of topics are read
whole and compared (``bench/compat_diff.py``): record counts per table and op, then a
field-by-field table of differences with identical differences grouped.

It is a report: the exit status is 0 whatever differs (1 only if a tool could not be run).
``--json out.json`` writes the full, uncollapsed difference list. ``--worker`` then runs
our search worker on Debezium's topics and compares the index with the tables
(``bench/compat_worker.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg2 import sql

from bench import compat_diff, compat_workload
from bench.common import Bench, log, topic_count
from bench.debezium import DEBEZIUM_VERSION, KAFKA_VERSION, DebeziumConnect, wait_running

#: Debezium's settings nearest to the representation our README promises (numeric as
#: strings, ISO-8601 times, base64 bytes), and what makes every event kind visible:
#: truncates (skipped by default) and the transaction block and topic.
DEBEZIUM_SETTINGS = {
    "time.precision.mode": "isostring",
    "binary.handling.mode": "base64",
    "skipped.operations": "none",
    "provide.transaction.metadata": "true",
}
TOOLS = ("debezium", "ours")
#: Debezium settings that have an equivalent in our capture, and the variable carrying it:
#: passed along so that both tools are compared like for like (``--ours-env`` overrides).
EQUIVALENT_ENV = {
    "provide.transaction.metadata": "CDC_POSTGRES__TRANSACTION_METADATA",
    "decimal.handling.mode": "CDC_POSTGRES__DECIMAL_HANDLING_MODE",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench compat", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, help="write the full difference table here")
    p.add_argument("--bulk-rows", type=int, default=5000,
                   help="rows inserted by the one large transaction (default 5000)")
    p.add_argument("--no-huge-json-numbers", action="store_true",
                   help="leave out the json/jsonb numbers beyond a double and int64 (1e400, "
                        "23-digit integers), for a capture that stops on them")
    p.add_argument("--debezium-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra or overriding Debezium connector setting (repeatable)")
    p.add_argument("--ours-env", action="append", default=[], metavar="CDC_X=VALUE",
                   help="extra environment for our capture (repeatable)")
    p.add_argument("--timeout", type=float, default=300,
                   help="seconds each tool may take to deliver the end marker")
    p.add_argument("--worker", action="store_true",
                   help="then run our `cdc worker --sink search` on Debezium's topics and "
                        "compare the index with the tables (bench/compat_worker.py)")
    p.add_argument("--keep", action="store_true", help="keep slots, topics and the schema")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="cdc-compat-"))
    bench = Bench(quick=True, duration=0, work=work)
    bench.schema = f"compat_{bench.uid}"
    log(f"compat run {bench.uid}: schema {bench.schema}, work folder {work}")
    debezium_settings = {**DEBEZIUM_SETTINGS, **_pairs(args.debezium_set)}
    ours_env = {**equivalent_env(debezium_settings), **_pairs(args.ours_env)}
    try:
        tables, hstore_schema = compat_workload.create(
            bench.dsn, bench.schema, huge_json_numbers=not args.no_huge_json_numbers)
        ids = compat_workload.captured_tables(bench.schema, tables)
        for tool in TOOLS:
            _publication(bench, bench.name(f"pub_{tool}"), ids)
            bench.slot(bench.name(f"slot_{tool}"))
        log(f"workload: {len(tables)} type tables (hstore: {hstore_schema or 'absent'}), "
            f"{args.bulk_rows} rows in the large transaction")
        compat_workload.run_workload(bench.dsn, bench.schema, hstore_schema, tables,
                                     args.bulk_rows)
        records: dict[str, list[compat_diff.Record]] = {}
        notes: list[str] = []
        for tool in TOOLS:
            prefix = bench.name(tool[:3])
            records[tool] = _capture(bench, tool, ids, prefix, debezium_settings, ours_env,
                                     args.timeout, notes)
        comparison = compat_diff.compare(records["debezium"], records["ours"],
                                         (bench.name("deb"), bench.name("our")))
        seconds = time.time() - started
        print(report(comparison, notes, seconds, hstore_schema is not None, ours_env))
        worker = None
        if args.worker:
            from bench import compat_worker

            worker = compat_worker.run(bench, bench.schema, tables, bench.name("deb"),
                                       args.timeout)
            print(compat_worker.report(worker))
        if args.json:
            out = _json(comparison, notes, started, seconds, debezium_settings, ours_env)
            if worker is not None:
                out["worker"] = compat_worker.as_json(worker)
            args.json.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
            log(f"wrote {args.json}")
    except ToolFailed as exc:
        log(str(exc))
        return 1
    finally:
        if not args.keep:
            bench.cleanup()
    return 0


class ToolFailed(RuntimeError):
    """A tool could not be started: there is nothing to compare."""


@dataclass(frozen=True)
class _Running:
    """A started tool, whichever it is."""

    stop: Callable[[], None]
    tail: Callable[[], str]
    state: Callable[[], str]


def _pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def equivalent_env(debezium_settings: dict[str, str]) -> dict[str, str]:
    """Our capture's variables for the Debezium settings it also has."""
    return {env: debezium_settings[key] for key, env in EQUIVALENT_ENV.items()
            if key in debezium_settings}


def _publication(bench: Bench, name: str, ids: list[str]) -> None:
    tables = sql.SQL(", ").join(sql.Identifier(*t.split(".", 1)) for t in ids)
    bench.sql(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(name),
                                                                   tables))
    bench.publications.append(name)


def _capture(bench: Bench, tool: str, ids: list[str], prefix: str,
             debezium_settings: dict[str, str], ours_env: dict[str, str], timeout: float,
             notes: list[str]) -> list[compat_diff.Record]:
    """Run one tool over its slot until the end marker is in Kafka; its records."""
    from bench.capture import Ours

    slot, pub = bench.name(f"slot_{tool}"), bench.name(f"pub_{tool}")
    work = bench.work / tool
    marker = f"{prefix}.{bench.schema}.zz_end"
    log(f"{tool}: draining slot {slot} into topics {prefix}.*")
    t0 = time.monotonic()
    if tool == "debezium":
        for name in [*ids, "message", "transaction"]:  # Connect would not create them
            bench.topic(f"{prefix}.{name}")
        connect = DebeziumConnect(work, f"dbz-{prefix}", bench.bootstrap, bench.pg_params(),
                                  ",".join(ids), slot, pub, prefix, "no_data",
                                  debezium_settings)
        if not wait_running(connect):
            tail = connect.tail()
            connect.stop()
            raise ToolFailed(f"Debezium did not start:\n{tail}")
        running = _Running(connect.stop, connect.tail, lambda: connect.task_state() or "GONE")
    else:
        env = {"CDC_POSTGRES__TABLES": "[" + ", ".join(ids) + "]", **ours_env}
        try:
            ours = Ours(bench, ids[0], slot, pub, prefix, work, extra_env=env)
        except RuntimeError as exc:
            raise ToolFailed(str(exc)) from exc
        running = _Running(ours.stop, ours.tail,
                           lambda: "RUNNING" if ours.proc.proc.poll() is None else "EXITED")
    try:
        arrived = _wait_marker(bench.bootstrap, marker, prefix, timeout,
                               lambda: running.state() == "RUNNING")
        if not arrived:
            last = running.tail().strip().splitlines()[-1:] or ["?"]
            notes.append(f"{tool}: the end marker did not arrive (state {running.state()}; "
                         f"last log line: {last[0][:300]}); compared what was written")
            log(f"{tool}: end marker missing; last log lines:\n{running.tail()}")
        elif running.state() != "RUNNING":
            notes.append(f"{tool}: state {running.state()} after the run")
    finally:
        running.stop()
    log(f"{tool}: done in {time.monotonic() - t0:.1f} s")
    topics = _topics(bench.bootstrap, prefix)
    bench.topics.extend(t for t in topics if t not in bench.topics)
    out = []
    for topic in topics:
        table = topic[len(prefix) + 1:]
        out += [compat_diff.record(table, p, k, v) for p, k, v in _read(bench.bootstrap, topic)]
    return out


def _wait_marker(bootstrap: str, marker: str, prefix: str, timeout: float,
                 alive: Callable[[], bool], settle: float = 3.0) -> bool:
    """Until the marker topic has a record and every topic of the prefix has stopped
    growing for ``settle`` s (records of other partitions may land a little later)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        if _count(bootstrap, marker) > 0:
            break
        time.sleep(0.5)
    else:
        return False
    last, since = -1, time.monotonic()
    while time.monotonic() - since < settle:
        total = sum(_count(bootstrap, t) for t in _topics(bootstrap, prefix))
        if total != last:
            last, since = total, time.monotonic()
        time.sleep(0.5)
    return True


def _count(bootstrap: str, topic: str) -> int:
    try:
        return topic_count(bootstrap, topic)
    except (KafkaException, KeyError):
        return 0


def _topics(bootstrap: str, prefix: str) -> list[str]:
    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    return sorted(t for t in meta.topics if t.startswith(prefix + "."))


def _read(bootstrap: str, topic: str) -> list[tuple[int, bytes | None, bytes | None]]:
    """Every record of ``topic`` as (partition, key, value), by partition then offset."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"compat-{time.time_ns()}",
                  "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts if ends[p]])
        got: list[tuple[int, int, bytes | None, bytes | None]] = []
        idle = 0
        while len(got) < sum(ends.values()) and idle < 50:
            msgs = c.consume(1000, 0.2)
            idle = 0 if msgs else idle + 1
            got += [(m.partition() or 0, m.offset() or 0, m.key(), m.value())
                    for m in msgs if m.error() is None]
        got.sort(key=lambda r: (r[0], r[1]))
        return [(p, k, v) for p, _, k, v in got]
    finally:
        c.close()


def _short_table(table: str) -> str:
    """``compat_<uid>.x`` -> ``x``: the schema changes with every run."""
    return table.split(".", 1)[1] if table.startswith("compat_") else table


def _cell(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", "\\n")


def report(comparison: compat_diff.Comparison, notes: list[str], seconds: float,
           hstore: bool, ours_env: dict[str, str] | None = None) -> str:
    """Markdown: record counts per table and op, the collapsed difference table, summary."""
    env = " ".join(f"{k}={v}" for k, v in (ours_env or {}).items())
    lines = [f"Debezium {DEBEZIUM_VERSION} (Kafka Connect {KAFKA_VERSION}) vs ours"
             f"{f' ({env})' if env else ''}; hstore "
             f"{'covered' if hstore else 'not available'}; run took {seconds:.0f} s.", ""]
    lines += [f"- note: {n}" for n in notes]
    ops = sorted({op for _, op in comparison.counts},
                 key=lambda o: ("cutdmBEGINEND".find(o) % 99, o))
    lines += ["", "Records per table and op (Debezium/ours where they differ):", "",
              "| table | " + " | ".join(ops) + " |", "|---" * (len(ops) + 1) + "|"]
    for table in sorted({t for t, _ in comparison.counts}):
        cells = []
        for op in ops:
            a, b = comparison.counts.get((table, op), [0, 0])
            cells.append(("" if a == 0 else str(a)) if a == b else f"**{a}/{b}**")
        lines.append(f"| {_short_table(table)} | " + " | ".join(cells) + " |")
    lines += ["", "Differences (columns: before and after images together; envelope fields "
              "once for all the tables they occur in):", "",
              "| table | field | Debezium | ours | records |", "|---|---|---|---|---|"]
    for table, path, x, y, n in compat_diff.collapse(comparison):
        lines.append(f"| {_cell(_short_table(table))} | {_cell(path)} | `{_cell(x)}` | "
                     f"`{_cell(y)}` | {n} |")
    lines += ["", comparison.summary()]
    return "\n".join(lines)


def _json(comparison: compat_diff.Comparison, notes: list[str], started: float,
          seconds: float, debezium_settings: dict[str, str],
          ours_env: dict[str, str]) -> dict[str, Any]:
    return {
        "command": "python -m bench compat " + " ".join(sys.argv[2:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "seconds": round(seconds, 1),
        "debezium": {"version": DEBEZIUM_VERSION, "kafka_connect": KAFKA_VERSION,
                     "settings": debezium_settings},
        "ours_env": ours_env,
        "notes": notes,
        "summary": comparison.summary(),
        "counts": [{"table": t, "op": op, "debezium": a, "ours": b}
                   for (t, op), (a, b) in sorted(comparison.counts.items())],
        "differences": [
            {"table": t, "field": f, "debezium": x, "ours": y, "records": n,
             "example_key": comparison.examples[(t, f, x, y)]}
            for (t, f, x, y), n in sorted(comparison.differences.items())],
    }


if __name__ == "__main__":
    sys.exit(main())
