"""``cdc tune`` against a real running capture and both sink workers: it finds them on the
ports ``metrics.port`` assigns, measures the changes flowing through, and recommends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from pipeline.harness import wait_until
from tests.integration.prometheus import consecutive_free_ports
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration


def _write(sc: Scenario, stop: threading.Event) -> None:
    """About 100 single-row transactions a second until stopped."""
    conn = sc.connect()
    i = 0
    try:
        while not stop.is_set():
            with conn, conn.cursor() as cur:
                cur.execute(f"INSERT INTO {sc.schema}.items VALUES (%s, %s, %s, 1)",
                            (i, f"row {i}", i))
            i += 1
            time.sleep(0.01)
    finally:
        conn.close()


def _tune(sc: Scenario, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "tune", *args],
                          env={**os.environ, **sc.env}, capture_output=True, text=True,
                          timeout=120)


def test_tune_measures_a_running_pipeline_and_recommends(scenario: Scenario) -> None:
    sc = scenario
    sc.env.update({"CDC_METRICS__PORT": str(consecutive_free_ports(3)),
                   "CDC_WORKER__ENGINE": "kafka"})
    idle = _tune(sc, "--window", "1")
    assert idle.returncode == 6, idle.stderr  # nothing runs yet
    assert "no process answered" in idle.stderr
    sc.start("capture")
    sc.start("worker")
    stop = threading.Event()
    writer = threading.Thread(target=_write, args=(sc, stop), daemon=True)
    writer.start()
    try:
        assert wait_until(lambda: all(sc.counter("cdc_sink_events_total", f"worker-{name}")
                                      for name in ("search", "cache")), 90, 0.5), \
            sc.processes["worker"].tail()  # both workers are writing
        text = _tune(sc, "--window", "4", "--target-p99", "2000")
        figures = _tune(sc, "--window", "4", "--rate", "5000", "--json")
    finally:
        stop.set()
        writer.join(10)
    assert text.returncode == 0, text.stderr
    print(text.stdout)
    assert "saturates first:" in text.stdout
    assert "for p99 freshness <= 2,000 ms" in text.stdout
    assert "verdict: the target is met" in text.stdout

    assert figures.returncode == 0, figures.stderr
    got = json.loads(figures.stdout)
    measured = got["measured"]
    assert 20 < measured["changes_per_s"] < 200  # the writer's ~100/s, on a busy machine
    assert set(measured["sinks"]) == {"search", "cache"}
    assert all(s["workers"] == 1 for s in measured["sinks"].values())
    assert got["rate"] == 5000
    rec = got["recommendation"]
    assert rec["partitions"] >= 3  # the raw topic has 3; partitions only grow
    for name in ("search", "cache"):
        sink = rec["sinks"][name]
        assert 1 <= sink["workers"] <= rec["partitions"]
        # the what-if load is far above the measured one: the model's figures say so
        assert got["model_at_rate"]["sinks"][name]["load"] > \
            got["model_now"]["sinks"][name]["load"]
