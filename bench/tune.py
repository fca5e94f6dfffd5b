"""``cdc tune`` checked against measurement: capture and one worker per sink (search,
cache; ``worker.engine: kafka``) run at two offered loads. At each, once warmed up,
``cdc tune --json --rate <the other load>`` reads the running processes' ``/metrics`` and
gives the model's figures at the load it measured and its what-if prediction for the other
load. Side by side: the measured p99 freshness (commit -> sink) and busy share of each sink
worker, the model's at the same load, and the model's from the other load's measurements.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from functools import partial
from typing import Any

from bench.capture import Ours
from bench.common import ROOT, Bench, log, workload, workload_result
from bench.worker import SINKS, SinkWorker, worker_env
from pipeline.config import KafkaSettings
from pipeline.harness import group_stable, wait_until


def _free_base(count: int) -> int:
    import socket

    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        ok = True
        for i in range(1, count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", base + i))
                except OSError:
                    ok = False
        if ok:
            return base
    raise RuntimeError("no consecutive free ports")


def run(bench: Bench, args: Any) -> dict[str, Any]:
    rates = [int(r) for r in args.tune_rates.split(",")]
    if len(rates) != 2:
        raise ValueError("--tune-rates takes two loads, e.g. 200,1000")
    seconds = args.tune_seconds
    target = bench.capture_target("tune")
    work = bench.work / "tune"
    base = _free_base(1 + len(SINKS))
    env = {**worker_env(bench, target.table, target.topic, "tune", work),
           "CDC_WORKER__ENGINE": "kafka", "CDC_METRICS__PORT": str(base),
           "CDC_KAFKA__TOPIC_PREFIX": target.prefix, "CDC_KAFKA__PARTITIONS": "3"}
    cap = Ours(bench, target.table, target.slot, target.publication, target.prefix, work,
               {"CDC_METRICS__PORT": str(base)})
    procs = [SinkWorker(sink, {**env, "CDC_METRICS__PORT": str(base + 1 + i)}, work / sink)
             for i, sink in enumerate(SINKS)]
    levels: dict[str, Any] = {}
    kafka = KafkaSettings(bootstrap_servers=bench.bootstrap)
    try:
        for sink in SINKS:
            if not wait_until(partial(group_stable, kafka,
                                      f"{env['CDC_WORKER__APP_ID']}-{sink}"), 120, 0.5):
                raise RuntimeError(f"{sink} worker group never became stable")
        for rate, other in ((rates[0], rates[1]), (rates[1], rates[0])):
            log(f"tune: {rate} changes/s for {seconds:.0f} s, then cdc tune --rate {other}")
            wl = workload(bench, target.table, "--rate", str(rate), "--duration", str(seconds),
                          "--txn-rows", str(args.txn_rows), "--mix", args.mix,
                          "--row-bytes", str(args.row_bytes), "--id-start",
                          str(1 + len(levels) * 10_000_000))
            warmup = seconds / 3
            time.sleep(warmup)
            window = seconds - warmup - 5
            out = subprocess.run(
                [sys.executable, "-m", "pipeline.cli", "tune", "--json", "--window",
                 str(window), "--rate", str(other), "--target-p99", str(args.tune_target_ms)],
                env={**os.environ, **env}, capture_output=True, text=True, cwd=ROOT,
                timeout=window + 300)
            written = workload_result(wl)
            if out.returncode != 0:
                raise RuntimeError(f"cdc tune failed ({out.returncode}): {out.stderr[-2000:]}")
            levels[str(rate)] = {"offered": rate, "workload_rows_per_s": written["rows_per_s"],
                                 "window_s": window, "tune": json.loads(out.stdout),
                                 "load_avg": os.getloadavg()[0]}
            time.sleep(3)  # let the workers drain before the next level
    finally:
        for p in procs:
            p.stop()
        cap.stop()
        bench.drop_slot(target.slot)
    return {"rates": rates, "seconds": seconds, "engine": "kafka",
            "target_p99_ms": args.tune_target_ms, "levels": levels,
            "comparison": compare(levels, rates)}


def compare(levels: dict[str, Any], rates: list[int]) -> list[dict[str, Any]]:
    """One row per (load, stage): measured, modelled at that load, predicted from the other."""
    rows = []
    for rate, other in ((rates[0], rates[1]), (rates[1], rates[0])):
        here, there = levels[str(rate)]["tune"], levels[str(other)]["tune"]
        m = here["measured"]
        cap_model = here["model_now"]["capture"] or {}
        cap_pred = there["model_at_rate"]["capture"] or {}
        rows.append({"load": rate, "stage": "capture", "changes_per_s": m["changes_per_s"],
                     "p99_measured_ms": m["capture_p99_ms"],
                     "p99_model_ms": cap_model.get("p99_ms"),
                     "p99_predicted_ms": cap_pred.get("p99_ms"),
                     "busy_measured": None, "busy_model": cap_model.get("busy"),
                     "busy_predicted": cap_pred.get("busy")})
        cap_now = cap_model.get("p99_ms") or 0.0
        for sink, s in m["sinks"].items():
            model = here["model_now"]["sinks"].get(sink, {})
            pred = there["model_at_rate"]["sinks"].get(sink, {})
            rows.append({"load": rate, "stage": f"sink {sink}",
                         "changes_per_s": m["changes_per_s"],
                         "p99_measured_ms": s["p99_ms"],
                         "p99_model_ms": (cap_now + model["p99_ms"]
                                          if model.get("p99_ms") is not None else None),
                         "p99_predicted_ms": pred.get("freshness_p99_ms"),
                         "busy_measured": s["busy"], "busy_model": model.get("busy"),
                         "busy_predicted": pred.get("busy")})
    return rows
