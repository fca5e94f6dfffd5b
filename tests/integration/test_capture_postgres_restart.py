"""Issue 9, item 6: `cdc capture` used to exit ("no COPY in progress") when PostgreSQL
stopped mid-stream. It must wait for the server and resume after the last confirmed
position. A private PostgreSQL 15 cluster is stopped and started (never the shared one)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg2
import pytest

from pipeline.harness import PipelineProcess, slot_active, wait_until
from pipeline.stack import postgres as pgstack
from pipeline.stack.ports import free_port
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration


def _execute(dsn: str, statement: str) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def test_capture_resumes_after_postgresql_stops_mid_stream(scenario: Scenario) -> None:
    sc = scenario
    # The postgres OS user must reach the cluster's folder: not under pytest's 0700 tmp.
    svc = Path(tempfile.mkdtemp(prefix="cdc-private-pg-", dir="/tmp"))
    os.chmod(svc, 0o755)
    port = free_port()
    record: dict[str, Any] = pgstack.start(svc, {"port": port})
    capture: PipelineProcess | None = None
    try:
        dsn = pgstack.dsn(port)
        _execute(dsn, f"CREATE SCHEMA {sc.schema}; CREATE TABLE {sc.table_id} "
                      "(id int PRIMARY KEY, name text, qty int, price numeric(12,2), note text)")
        env = {**sc.env, "CDC_POSTGRES__DSN": dsn}
        capture = PipelineProcess("capture", env, sc.work / "capture.log")
        assert wait_until(lambda: slot_active(dsn, sc.settings.postgres.slot), 60), \
            capture.tail()

        def ids() -> set[int]:
            # at least once: what was not confirmed before the stop may come twice
            return {orjson.loads(m.value())["after"]["id"]
                    for m in sc.read_topic(sc.topic) if m.value() is not None}

        _execute(dsn, f"INSERT INTO {sc.table_id} VALUES (1, 'before', 1, 1)")
        assert wait_until(lambda: ids() == {1}, 60), capture.tail()

        pgstack.stop(svc, record)  # fast shutdown: the walsender goes away mid-stream
        time.sleep(5)  # several reconnection attempts against a stopped server
        assert capture.alive(), capture.tail()

        record = pgstack.start(svc, {"port": port})
        _execute(dsn, f"INSERT INTO {sc.table_id} VALUES (2, 'after', 2, 2)")
        assert wait_until(lambda: ids() == {1, 2}, 90), capture.tail()
        assert capture.alive(), capture.tail()
        assert "no COPY in progress" in capture.tail(200) or "closed" in capture.tail(200)
    finally:
        if capture is not None:
            capture.stop()
        with contextlib.suppress(Exception):
            pgstack.stop(svc, record)
        shutil.rmtree(svc, ignore_errors=True)
