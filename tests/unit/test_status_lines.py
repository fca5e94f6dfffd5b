"""`cdc status`'s lines for one process's last metrics snapshot (pipeline.status)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from pipeline.status import _process_lines


def test_a_running_process_and_its_figures_read_well() -> None:
    snap = {"pid": os.getpid(), "time": time.time(),
            "counters": {"cdc_capture_events_total": 1234567.0},
            "gauges": {"cdc_capture_confirmed_lsn": float(0x1_DF12B450),
                       "cdc_replication_lag_seconds": 0.123456789},
            "latency_ms": {"cdc_commit_to_kafka_latency": {"count": 3, "p50": 292.21624365,
                                                           "p99": 1000.5},
                           "idle": {"count": 0, "p50": None, "p99": None}}}
    lines = _process_lines("capture", snap)
    assert lines[0].startswith(f"capture (pid {os.getpid()}, updated")
    assert "  cdc_capture_events_total = 1,234,567" in lines
    assert "  cdc_capture_confirmed_lsn = 1/DF12B450" in lines  # as PostgreSQL prints it
    assert "  cdc_replication_lag_seconds = 0.123457" in lines
    assert "  cdc_commit_to_kafka_latency: n=3 p50=292.2ms p99=1000.5ms" in lines
    assert "  idle: n=0" in lines  # never "p50=Nonems"


def test_a_process_that_is_gone_is_said_to_be() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (line,) = _process_lines("capture", {"pid": gone.pid, "time": time.time()})
    assert "NOT RUNNING" in line
