"""Workers joining and leaving a sink's group while changes flow: nothing is lost.

Every join or leave is a rebalance, the moment a consumer framework is most likely to skip
a record (faust-streaming does; see ``agents/guard.py``)."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.harness import PipelineProcess
from pipeline.metrics import read_snapshots
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration


def _steady_load(sc: Scenario, rows: int, stop: threading.Event) -> None:
    """About 100 transactions a second: inserts, and an update of each row a little later
    (a lost last update leaves a row behind, which ``converged`` sees)."""
    conn = sc.connect()
    table = f"{sc.schema}.items"
    for i in range(1, rows + 1):
        if stop.is_set():
            break
        with conn, conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (%s, %s, %s, 1)", (i, f"item {i}", i))
            if i > 20:
                cur.execute(f"UPDATE {table} SET qty = qty + 1000 WHERE id = %s", (i - 20,))
        time.sleep(0.01)
    conn.close()


def _busy_processes(sc: Scenario, prefix: str) -> int:
    snaps = read_snapshots(sc.work / "metrics")
    return sum(1 for name, snap in snaps.items() if name.startswith(prefix)
               and snap.get("counters", {}).get("cdc_worker_records_total", 0) > 0)


@pytest.mark.parametrize("engine", ["faust", "kafka"])
def test_workers_joining_and_leaving_under_load_lose_nothing(
        scenario: Scenario, engine: str) -> None:
    sc = scenario
    sc.env["CDC_WORKER__ENGINE"] = engine
    sc.start("capture")
    first = sc.start("worker")
    stop = threading.Event()
    load = threading.Thread(target=_steady_load, args=(sc, 1500, stop))
    load.start()
    extra: list[PipelineProcess] = []
    try:
        time.sleep(2.0)
        extra.append(PipelineProcess("worker", sc.env, sc.work / "worker-2.log"))  # scale out
        time.sleep(5.0)
        first.stop()  # leaves the group: its partitions move
        time.sleep(1.0)
        extra.append(PipelineProcess("worker", sc.env, sc.work / "worker-3.log"))
        load.join(60)
        assert sc.converged(150), "\n".join(p.tail() for p in extra)
        assert len(sc.expected()) > 1000
        assert sc.counter("cdc_dead_letters_total") == 0
        # The partitions really moved: more than one search worker took records.
        assert _busy_processes(sc, "worker-search") >= 2
    finally:
        stop.set()
        for proc in extra:
            proc.stop()
