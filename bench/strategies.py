"""Every capture strategy on one workload and machine, in one run (``python -m bench
strategies``): log-based (``capture.source: logical``), triggers, polling and the outbox relay.

For each strategy, one after the other (never two at once), each on fresh tables of its own:

* **drain**: the workload writes a backlog of ``--strategy-rows`` row changes at full speed
  with the strategy installed (slot and publication, triggers, the polling columns and index,
  the outbox table with one ``pipeline.outbox.publish`` event per changed row), then one
  ``cdc capture`` drains it alone. changes/s = changes published / (broker append time of the
  last - of the first), start-up not counted; CPU (user + system) of the capture process from
  the moment it is connected until the last record is in Kafka, per 1,000 changes published.
  Polling publishes each surviving row once (its last state; hard deletes are not seen), so
  it publishes fewer changes than were written: both counts are kept.
* **latency** at ``--strategy-rate`` changes/s for ``--strategy-seconds``: broker append time
  (``LogAppendTime`` topics) - the change's own time, for changes after a warm-up. That time
  differs by nature: the commit (logical), the trigger's ``clock_timestamp()`` (triggers),
  ``updated_at = now()``, the writing transaction's start (polling), and the client's clock
  when the event was written (outbox: ``ts_us`` in the payload). Polling's latency is its
  safety lag plus up to one interval, by design.
* **writer**: transactions/s of the workload at full speed (one connection, no capture
  running) on a plain table, and on tables with the triggers installed, with the polling
  index and ``created_at`` column, with one outbox event per transaction and with one per
  changed row (``publish`` is one INSERT per event). Configurations
  alternate over ``--writer-rounds`` rounds of ``--writer-seconds`` each; the median counts.

Everything is dropped at the end: triggers through ``cdc triggers uninstall``, the outbox
table with the run's schema, slots, publications, topics and the run's offsets topic.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient
from psycopg2 import sql

from bench.capture import topic_figures
from bench.common import (
    ROOT,
    Bench,
    cpu_seconds,
    envelope_commit_us,
    log,
    proc_status,
    read_topic,
    wait_topic,
    workload,
    workload_result,
)
from bench.workload import OUTBOX_AGGREGATE, create_table
from pipeline.harness import PipelineProcess, slot_active, wait_until

STRATEGIES = ("logical", "triggers", "polling", "outbox")
#: Polling runs in ``lag`` mode with a small safety lag and interval (the defaults are 5 s
#: and 1 s): rows are read once 1 s old, every 0.2 s.
POLLING = {"mode": "lag", "safety_lag_s": "1.0", "interval_s": "0.2"}
#: Writer-cost configurations: what is added to the plain table.
WRITERS = ("plain", "triggers", "polling", "outbox_txn", "outbox")


@dataclass
class Setup:
    """One strategy installed on one fresh table, with what its capture needs."""

    kind: str
    tag: str
    table: str
    env: dict[str, str]  # the capture's CDC_* settings
    workload_args: list[str] = field(default_factory=list)
    topic: str | None = None
    slot: str | None = None
    app: str = ""  # application_name of the capture's connection: how we see it started

    def commit_us_of(self, value: Any) -> int:
        return int(value["ts_us"]) if self.kind == "outbox" else envelope_commit_us(value)

    def expected_records(self, wl: dict[str, Any]) -> int | None:
        """Records a drain of the workload's changes ends with (None: not known up front)."""
        ops = wl["ops"]
        if self.kind == "outbox":
            return int(wl["outbox_events"])
        if self.kind == "polling":  # each surviving row once, deletes unseen
            return int(ops["insert"] - ops["delete"])
        if self.kind == "triggers":  # the trigger relay sends no tombstone after a delete
            return int(wl["rows"])
        return int(wl["rows"] + ops["delete"])  # a delete is followed by a tombstone


def cdc(env: dict[str, str], *command: str) -> str:
    """Run ``cdc <command>`` with ``env``; its output (raises with it if it fails)."""
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", *command],
                         env={**os.environ, **env}, capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"cdc {' '.join(command)} failed: {out.stdout}{out.stderr}"[-2000:])
    return out.stdout.strip()


def prepare(bench: Bench, kind: str, tag: str, capture: bool = True) -> Setup:
    """A fresh table ``<schema>.<tag>`` with strategy ``kind`` installed; with ``capture``
    also its topic (and slot and publication for ``logical``)."""
    table = f"{bench.schema}.{tag}"
    create_table(bench.dsn, table)
    prefix = bench.name(tag)
    app = bench.name(f"{tag}_cap")
    env = {
        **bench.env,
        "CDC_POSTGRES__DSN": f"{bench.dsn} application_name={app}",
        "CDC_POSTGRES__TABLES": f"[{table}]",
        "CDC_KAFKA__TOPIC_PREFIX": prefix,
        "CDC_KAFKA__PARTITIONS": "3",
        "CDC_KAFKA__OFFSETS_TOPIC": bench.name("offsets"),
        "CDC_METRICS__SNAPSHOT_DIR": str(bench.work / tag / "metrics"),
        "CDC_LOG_LEVEL": "WARNING",
        "CDC_CAPTURE__SOURCE": kind if kind in STRATEGIES else "logical",
    }
    setup = Setup(kind, tag, table, env, app=app)
    schema, name = table.split(".", 1)
    topic = f"{prefix}.{table}"
    if kind == "logical" and capture:
        setup.env["CDC_POSTGRES__PUBLICATION"] = bench.publication(bench.name(f"pub_{tag}"),
                                                                   table)
        setup.slot = setup.env["CDC_POSTGRES__SLOT"] = bench.slot(bench.name(f"slot_{tag}"))
    elif kind == "triggers":
        # A log schema of the run's own: uninstall drops it (and hstore if it made it).
        setup.env["CDC_TRIGGERS__LOG_SCHEMA"] = bench.name(tag)
        log(f"  {cdc(setup.env, 'triggers', 'install')}".replace("\n", "; "))
    elif kind == "polling":
        # What polling needs (README "Setting it up"): the keyset index, and created_at so
        # an insert is published as c. The workload sets updated_at = now() on update.
        bench.sql(sql.SQL("ALTER TABLE {t} ADD COLUMN created_at timestamptz NOT NULL "
                          "DEFAULT now(); CREATE INDEX {i} ON {t} (updated_at, id)").format(
            t=sql.Identifier(schema, name), i=sql.Identifier(f"{name}_poll_idx")))
        setup.env.update({f"CDC_POLLING__{k.upper()}": v for k, v in POLLING.items()})
        setup.env["CDC_POLLING__CREATED_COLUMN"] = "created_at"
    elif kind in ("outbox", "outbox_txn"):
        outbox = f"{table}_outbox"
        setup.env.update({"CDC_OUTBOX__TABLE": outbox,
                          "CDC_OUTBOX__TOPIC_TEMPLATE": f"{prefix}.{{aggregatetype}}"})
        log(f"  {cdc(setup.env, 'outbox', 'install')}")
        setup.workload_args = ["--outbox", outbox, "--outbox-per",
                               "txn" if kind == "outbox_txn" else "row"]
        topic = f"{prefix}.{OUTBOX_AGGREGATE}"
    if capture:
        if bench.name("offsets") not in bench.topics:  # made by capture, dropped at the end
            bench.topics.append(bench.name("offsets"))
        setup.topic = bench.topic(topic)
    return setup


def teardown(bench: Bench, setup: Setup) -> None:
    """Drop what only ``cdc`` can: the slot now (it retains WAL), the triggers through
    ``cdc triggers uninstall``. The rest goes with the run's schema and topics."""
    if setup.slot:
        bench.drop_slot(setup.slot)
    if setup.kind == "triggers":
        out = cdc(setup.env, "triggers", "uninstall", "--yes")
        log(f"  {out}".replace("\n", "; "))


class Capture:
    """``cdc capture`` on a setup, started and connected."""

    def __init__(self, bench: Bench, setup: Setup, work: Path) -> None:
        self.proc = PipelineProcess("capture", setup.env, work / "capture.log")
        self.pid = self.proc.proc.pid
        if setup.slot:
            ready = lambda: slot_active(bench.dsn, setup.slot or "")  # noqa: E731
        else:
            ready = lambda: bool(bench.sql(  # noqa: E731
                "SELECT 1 FROM pg_stat_activity WHERE application_name = %s", (setup.app,)))
        if not wait_until(lambda: ready() or not self.proc.alive(), 60) or not self.proc.alive():
            tail = self.proc.tail()
            self.proc.stop()
            raise RuntimeError(f"{setup.kind} capture did not start:\n{tail}")

    def stop(self) -> None:
        self.proc.stop()


def write(bench: Bench, setup: Setup, args: Any, *extra: str) -> dict[str, Any]:
    return workload_result(workload(
        bench, setup.table, "--txn-rows", str(args.txn_rows), "--mix", args.mix,
        "--row-bytes", str(args.row_bytes), *setup.workload_args, *extra))


def drain(bench: Bench, kind: str, rows: int, args: Any) -> dict[str, Any]:
    """Write a backlog of ``rows`` changes with ``kind`` installed; one capture drains it."""
    setup = prepare(bench, kind, f"d{kind[:4]}")
    assert setup.topic is not None
    try:
        log(f"strategies: {kind}: writing a backlog of {rows} changes")
        wl = write(bench, setup, args, "--rows", str(rows))
        log(f"  written in {wl['seconds']} s ({wl['rows_per_s']} changes/s)")
        if kind == "polling":  # let the last rows age past the safety lag first
            time.sleep(float(POLLING["safety_lag_s"]))
        want = setup.expected_records(wl)
        assert want is not None
        cap = Capture(bench, setup, bench.work / setup.tag)
        try:
            cpu0 = cpu_seconds(cap.pid)
            t0 = time.monotonic()
            got = wait_topic(bench.bootstrap, setup.topic, want, timeout=60 + want / 200)
            wall = time.monotonic() - t0
            cpu = cpu_seconds(cap.pid) - cpu0
            mem = proc_status(cap.pid)
        finally:
            cap.stop()
    finally:
        teardown(bench, setup)
    fig = read_topic(bench.bootstrap, setup.topic, commit_us_of=setup.commit_us_of)
    res = topic_figures(fig)
    res.pop("p50_ms"), res.pop("p99_ms"), res.pop("max_ms")  # a backlog's age, not latency
    res.update({
        "changes_written": wl["rows"], "workload": wl, "expected_records": want,
        "cpu_s": round(cpu, 2), "wall_s": round(wall, 1),
        "cpu_ms_per_1k_changes": round(1e6 * cpu / max(fig.changes, 1), 1),
        "cpu_ms_per_1k_written": round(1e6 * cpu / max(wl["rows"], 1), 1),
        "peak_rss_mb": round(mem.get("VmHWM", 0) / 1024, 1)})
    if got < want:
        res["warning"] = f"only {got} of {want} records arrived"
    log(f"  {kind}: {res['rows_per_s']} changes/s over {res['drain_s']} s, "
        f"{res['cpu_ms_per_1k_changes']} CPU-ms/1k changes")
    return res


def latency(bench: Bench, kind: str, rate: int, seconds: float, args: Any) -> dict[str, Any]:
    """Latency of ``kind`` at a fixed offered load of ``rate`` changes/s."""
    setup = prepare(bench, kind, f"l{kind[:4]}")
    assert setup.topic is not None
    warmup = min(10.0, seconds / 4)
    try:
        cap = Capture(bench, setup, bench.work / setup.tag)
        try:
            log(f"strategies: {kind} at {rate} changes/s for {seconds:.0f} s")
            cpu0 = cpu_seconds(cap.pid)
            since_us = int((time.time() + warmup) * 1e6)
            wl = write(bench, setup, args, "--rate", str(rate), "--duration", str(seconds))
            want = setup.expected_records(wl)
            if want is None or kind == "polling":  # polling: until the topic stops growing
                lag = float(POLLING["safety_lag_s"]) + 2 * float(POLLING["interval_s"])
                got = wait_topic(bench.bootstrap, setup.topic, 1 << 62, timeout=lag + 3,
                                 settle=3)
            else:
                got = wait_topic(bench.bootstrap, setup.topic, want, timeout=60)
            cpu = cpu_seconds(cap.pid) - cpu0
        finally:
            cap.stop()
    finally:
        teardown(bench, setup)
    fig = read_topic(bench.bootstrap, setup.topic, commit_after_us=since_us,
                     commit_us_of=setup.commit_us_of)
    res = topic_figures(fig)
    res.update({"offered_rows_per_s": rate, "warmup_excluded_s": warmup,
                "changes_written": wl["rows"], "records_published": got,
                "achieved_rows_per_s": wl["rows_per_s"],
                "workload_max_behind_s": wl["max_behind_s"], "cpu_s": round(cpu, 2),
                "cpu_pct": round(100 * cpu / wl["seconds"], 1)})
    if want is not None and kind != "polling" and got < want:
        res["warning"] = f"only {got} of {want} records arrived"
    log(f"  {kind}@{rate}: p50 {res['p50_ms']} ms p99 {res['p99_ms']} ms, "
        f"cpu {res['cpu_pct']} %")
    return res


def writer(bench: Bench, rounds: int, seconds: float, args: Any) -> dict[str, Any]:
    """Transactions/s of the workload at full speed per configuration, alternating."""
    setups = {w: prepare(bench, w, f"w{w.replace('_', '')[:7]}", capture=False)
              for w in WRITERS}
    runs: dict[str, list[dict[str, Any]]] = {w: [] for w in WRITERS}
    next_id = dict.fromkeys(WRITERS, 1)
    try:
        for r in range(rounds):
            for w, setup in setups.items():
                wl = write(bench, setup, args, "--duration", str(seconds),
                           "--id-start", str(next_id[w]))
                next_id[w] = wl["next_id"]
                runs[w].append(wl)
                log(f"strategies: writer {w} round {r + 1}/{rounds}: "
                    f"{wl['transactions'] / wl['seconds']:.1f} txn/s, {wl['rows_per_s']} rows/s")
    finally:
        for setup in setups.values():
            teardown(bench, setup)
    out: dict[str, Any] = {}
    for w, wls in runs.items():
        tps = [round(x["transactions"] / x["seconds"], 1) for x in wls]
        out[w] = {"txn_per_s": statistics.median(tps), "rounds_txn_per_s": tps,
                  "rows_per_s": statistics.median(x["rows_per_s"] for x in wls)}
    base = out["plain"]["txn_per_s"]
    for w in WRITERS:
        out[w]["vs_plain"] = round(out[w]["txn_per_s"] / base, 3) if base else None
    return out


def run(bench: Bench, args: Any) -> dict[str, Any]:
    """The ``strategies`` section. A strategy that fails is recorded with its error; the
    others still run."""
    out: dict[str, Any] = {
        "strategies": list(STRATEGIES), "backlog_changes": args.strategy_rows,
        "offered_rows_per_s": args.strategy_rate, "seconds": args.strategy_seconds,
        "polling": POLLING, "drain": {}, "latency": {}}
    try:
        for kind in STRATEGIES:
            out["drain"][kind] = _guard(lambda k=kind: drain(bench, k, args.strategy_rows, args))
        for kind in STRATEGIES:
            out["latency"][kind] = _guard(lambda k=kind: latency(
                bench, k, args.strategy_rate, args.strategy_seconds, args))
        out["writer"] = _guard(lambda: writer(bench, args.writer_rounds, args.writer_seconds,
                                              args))
        out["writer"]["seconds_per_round"] = args.writer_seconds
    finally:
        _own_topics(bench)
    return out


def _own_topics(bench: Bench) -> None:
    """Hand every topic of this run to the clean-up, also those capture made itself (the
    logical source's ``<prefix>.message``)."""
    admin = AdminClient({"bootstrap.servers": bench.bootstrap})
    made = admin.list_topics(timeout=10).topics
    bench.topics += sorted(t for t in made if t.startswith(bench.name(""))
                           and t not in bench.topics)


def _guard(measure: Any) -> dict[str, Any]:
    try:
        return measure()  # type: ignore[no-any-return]
    except Exception as exc:  # noqa: BLE001 - keep the other strategies' figures
        log(f"strategies: failed:\n{traceback.format_exc()}")
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}
