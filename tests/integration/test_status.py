"""`cdc status` shows the slot, each sink group's consumer lag and the processes' metrics."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.harness import wait_until
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration


def _status(sc: Scenario) -> str:
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "status"],
                            env={**os.environ, **sc.env}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_status_reports_slot_lag_and_metrics(scenario: Scenario) -> None:
    sc = scenario
    sc.start("capture")
    sc.start("worker")
    sc.execute("INSERT INTO items VALUES (1, 'a', 1, 1), (2, 'b', 2, 2)")
    assert sc.converged(90)
    search = sc.settings.group_id("search")

    def settled() -> bool:
        out = _status(sc)
        return f"consumer lag {search} {sc.topic}: 0" in out and "behind by" in out

    assert wait_until(settled, 30)
    out = _status(sc)
    assert f"slot {sc.settings.postgres.slot}: active" in out
    assert 'cdc_capture_events_total{op="c",table="' + sc.table_id + '"} = 2' in out
    assert 'cdc_sink_events_total{sink="search"} = 2' in out
    assert "cdc_commit_to_sink_latency" in out


def test_status_with_kafka_down_says_so_once_and_what_to_check(scenario: Scenario) -> None:
    sc = scenario
    env = {**os.environ, **sc.env, "CDC_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    env.pop("CDC_METRICS__SNAPSHOT_DIR", None)
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "status"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "did not answer" in result.stdout and "cdc stack status" in result.stdout
    assert "set metrics.snapshot_dir" in result.stdout
    assert "rdkafka" not in result.stderr  # no librdkafka log line per retry
