"""Incremental backfills (`cdc snapshot start`, the signal table): existing rows reach the
sinks while the stream goes on, racing writers never leave a stale value, a kill -9 resumes
from the last finished chunk, unchanged TOAST values survive."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import orjson
import psycopg2
import pytest

from pipeline.harness import index_documents, wait_until
from pipeline.sources.postgres.backfill_control import load_state
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration


def _cdc(sc: Scenario, *args: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args],
                          env={**os.environ, **sc.env, **(env or {})}, capture_output=True,
                          text=True, timeout=120, check=False)


def _fill(sc: Scenario, rows: int) -> None:
    sc.execute("INSERT INTO items SELECT g, 'existing ' || g, g, g * 1.5 "
               "FROM generate_series(1, %s) g", rows)


def _state(sc: Scenario) -> dict[str, Any]:
    tables = load_state(sc.settings).get("tables", [])
    return next((t for t in tables if t["table"] == sc.table_id), {})


def _reads(sc: Scenario) -> list[dict[str, Any]]:
    values = (orjson.loads(m.value()) for m in sc.read_topic(sc.topic) if m.value())
    return [v for v in values if v["op"] == "r"]


class _Writer(threading.Thread):
    """Updates, deletes and re-inserts random keys of the table until stopped."""

    def __init__(self, sc: Scenario, rows: int, toast: bool = False) -> None:
        super().__init__(daemon=True)
        self.sc, self.rows, self.toast = sc, rows, toast
        self.stop = threading.Event()
        self.changes = 0

    def run(self) -> None:
        conn = psycopg2.connect(self.sc.dsn)
        rnd = random.Random(7)
        table = self.sc.table_id
        while not self.stop.is_set():
            ids = [rnd.randint(1, self.rows) for _ in range(20)]
            with conn, conn.cursor() as cur:
                cur.execute(f"UPDATE {table} SET qty = qty + 1, name = 'upd ' || id "
                            "WHERE id = ANY(%s)", (ids,))
                if not self.toast:
                    cur.execute(f"DELETE FROM {table} WHERE id = %s", (ids[0],))
                    cur.execute(f"INSERT INTO {table} VALUES (%s, 'back', 1, 1) "
                                "ON CONFLICT DO NOTHING", (ids[1],))
            self.changes += 1
            time.sleep(0.002)
        conn.close()


def test_a_backfill_racing_writers_converges_with_no_stale_row(scenario: Scenario) -> None:
    sc = scenario
    rows = 20_000
    _fill(sc, rows)
    sc.env["CDC_POSTGRES__SNAPSHOT_MODE"] = "never"  # the existing rows come only from it
    sc.env["CDC_WORKER__ENGINE"] = "kafka"
    sc.start("capture")
    sc.start("worker")
    writer = _Writer(sc, rows)
    writer.start()
    started = _cdc(sc, "snapshot", "start", sc.table_id, "--chunk-size", "500")
    assert started.returncode == 0, started.stderr
    assert wait_until(lambda: _state(sc).get("state") == "done", 180, 0.5), (
        sc.processes["capture"].tail())
    writer.stop.set()
    writer.join()
    assert writer.changes > 50
    assert sc.converged(180), sc.processes["worker"].tail()
    reads = _reads(sc)
    assert reads and {r["source"]["snapshot"] for r in reads} == {"incremental"}
    assert len(reads) <= rows  # a key changed in its chunk's window is left to the stream
    status = _cdc(sc, "snapshot", "status")
    assert status.returncode == 0 and "done" in status.stdout and "100.0%" in status.stdout


def test_a_backfill_killed_part_way_resumes_from_its_last_chunk(scenario: Scenario) -> None:
    sc = scenario
    rows = 150_000
    _fill(sc, rows)
    sc.env["CDC_POSTGRES__SNAPSHOT_MODE"] = "never"
    sc.env["CDC_WORKER__ENGINE"] = "kafka"
    capture = sc.start("capture")
    started = _cdc(sc, "snapshot", "start", sc.table_id, "--chunk-size", "300")
    assert started.returncode == 0, started.stderr
    assert wait_until(lambda: _state(sc).get("rows", 0) >= 3_000, 120, 0.05), capture.tail()
    # Frozen while the second start is refused (a CLI start takes a second or two, time
    # enough for a fast machine to finish the backfill), then killed -9 where it stood.
    os.killpg(capture.proc.pid, signal.SIGSTOP)
    again = _cdc(sc, "snapshot", "start", sc.table_id)
    assert again.returncode != 0 and "already running" in again.stderr, again.stderr
    capture.kill()
    before = len(_reads(sc))
    assert before < rows, "the backfill finished before the kill; use more rows"
    sc.execute("UPDATE items SET name = 'changed after the crash' WHERE id IN (1, 149999)")
    sc.execute("DELETE FROM items WHERE id = 149998")
    sc.start("capture")
    sc.start("worker")
    assert wait_until(lambda: _state(sc).get("state") == "done", 300, 0.5), (
        sc.processes["capture"].tail())
    assert sc.converged(300), sc.processes["worker"].tail()
    reads = len(_reads(sc))
    assert rows - 1 <= reads < rows + before  # finished chunks were not read again
    assert "resuming the backfill" in sc.processes["capture"].tail(300)


def test_unchanged_toast_values_updated_inside_a_window_survive(scenario: Scenario) -> None:
    sc = scenario
    rows = 3_000
    # ~6.4 KB of incompressible text per row: stored out of line (TOAST), so an update that
    # does not touch it arrives without it.
    sc.execute("INSERT INTO items SELECT g, 'existing', g, 1, (SELECT string_agg("
               "md5(random()::text || g || s), '') FROM generate_series(1, 200) s) "
               "FROM generate_series(1, %s) g", rows)
    sc.env["CDC_POSTGRES__SNAPSHOT_MODE"] = "never"
    sc.env["CDC_WORKER__ENGINE"] = "kafka"
    sc.start("capture")
    sc.start("worker")
    writer = _Writer(sc, rows, toast=True)
    writer.start()
    started = _cdc(sc, "snapshot", "start", sc.table_id, "--chunk-size", "100")
    assert started.returncode == 0, started.stderr
    assert wait_until(lambda: _state(sc).get("state") == "done", 180, 0.5)
    writer.stop.set()
    writer.join()
    assert sc.converged(180), sc.processes["worker"].tail()
    assert sc.counter("cdc_capture_backfill_toast_filled_total") > 0, "no update hit a window"
    conn = psycopg2.connect(sc.dsn)
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT id::text, note FROM {sc.table_id}")
        notes = dict(cur.fetchall())
    conn.close()
    docs = index_documents(sc.es_url, sc.index)
    wrong = [k for k, note in notes.items() if docs.get(k, {}).get("note") != note]
    assert not wrong, f"{len(wrong)} documents lost their TOAST value, e.g. {wrong[:5]}"


def test_the_signal_table_starts_a_filtered_backfill(scenario: Scenario) -> None:
    sc = scenario
    _fill(sc, 300)
    signals = f"{sc.schema}.debezium_signal"
    sc.execute(f"CREATE TABLE {signals} (id varchar(42) PRIMARY KEY, type varchar(32) "
               "NOT NULL, data varchar(2048))")
    sc.env["CDC_POSTGRES__SNAPSHOT_MODE"] = "never"
    sc.env["CDC_POSTGRES__SIGNAL_TABLE"] = signals
    sc.start("capture")
    data = {"data-collections": [sc.table_id], "type": "incremental",
            "additional-conditions": [{"data-collection": sc.table_id, "filter": "id <= 100"}]}
    sc.execute(f"INSERT INTO {signals} VALUES ('ad-hoc-1', 'execute-snapshot', %s)",
               orjson.dumps(data).decode())
    assert wait_until(lambda: _state(sc).get("state") == "done", 120, 0.3), (
        sc.processes["capture"].tail())
    reads = _reads(sc)
    assert sorted(r["after"]["id"] for r in reads) == list(range(1, 101))
    # The signal table's own rows are not published anywhere.
    assert not any(t.endswith("debezium_signal") for t in sc.read_topic_names())


def test_backfill_requests_that_cannot_work_are_refused_with_the_reason(
    scenario: Scenario,
) -> None:
    sc = scenario
    sc.execute("CREATE TABLE nokey (a int, b text)".replace("nokey", f"{sc.schema}.nokey"))
    listed = {"CDC_POSTGRES__TABLES": f"[{sc.table_id}, {sc.schema}.nokey]"}
    not_listed = _cdc(sc, "snapshot", "start", "public.elsewhere")
    assert not_listed.returncode != 0 and "not captured" in not_listed.stderr
    no_key = _cdc(sc, "snapshot", "start", f"{sc.schema}.nokey", env=listed)
    assert no_key.returncode != 0 and "no primary key" in no_key.stderr, no_key.stderr
    bad = _cdc(sc, "snapshot", "start", sc.table_id, "--where", "no_such_column > 1")
    assert bad.returncode != 0 and "--where" in bad.stderr and "no_such_column" in bad.stderr
    harmful = _cdc(sc, "snapshot", "start", sc.table_id, "--where",
                   f"true; DROP TABLE {sc.table_id}")
    assert harmful.returncode != 0
    # valid SQL inside the chunk query's parentheses, but every row of every chunk: endless
    escaping = _cdc(sc, "snapshot", "start", sc.table_id, "--where", "id > 3) OR (true")
    assert escaping.returncode == 2 and "closes more than it opens" in escaping.stderr, \
        escaping.stderr
    stop_unknown = _cdc(sc, "snapshot", "stop", "public.elsewhere")
    assert stop_unknown.returncode == 2 and "not captured" in stop_unknown.stderr
    stop_idle = _cdc(sc, "snapshot", "stop", sc.table_id)
    assert stop_idle.returncode == 0 and "no backfill of" in stop_idle.stdout, stop_idle
    assert _state(sc) == {}
    sc.execute("SELECT count(*) FROM items")  # still there


def test_snapshot_mode_incremental_streams_at_once_and_backfills_alongside(
    scenario: Scenario,
) -> None:
    sc = scenario
    rows = 10_000
    _fill(sc, rows)
    sc.env["CDC_POSTGRES__SNAPSHOT_MODE"] = "incremental"
    sc.env["CDC_POSTGRES__SNAPSHOT_CHUNK_SIZE"] = "400"
    sc.env["CDC_WORKER__ENGINE"] = "kafka"
    writer = _Writer(sc, rows)
    writer.start()
    sc.start("capture")  # streaming: the slot is active while the tables are still read
    sc.start("worker")
    assert wait_until(lambda: _state(sc).get("state") == "done", 180, 0.5), (
        sc.processes["capture"].tail())
    writer.stop.set()
    writer.join()
    assert sc.converged(180), sc.processes["worker"].tail()
    reads = _reads(sc)
    assert 0 < len(reads) <= rows and {r["source"]["snapshot"] for r in reads} == {"incremental"}


def test_a_backfill_after_a_stopped_one_reads_with_its_own_filter(scenario: Scenario) -> None:
    """The stopped backfill's reader (its filter) was kept and read the next backfill of
    the table: `cdc verify --repair` then re-read the wrong rows and missed its key."""
    sc = scenario
    _fill(sc, 30_000)
    sc.env["CDC_POSTGRES__SNAPSHOT_MODE"] = "never"
    capture = sc.start("capture")
    first = _cdc(sc, "snapshot", "start", sc.table_id, "--where", "id <= 20000",
                 "--chunk-size", "100")
    assert first.returncode == 0, first.stderr
    assert wait_until(lambda: _state(sc).get("rows", 0) >= 200, 60, 0.05), capture.tail()
    stopped = _cdc(sc, "snapshot", "stop", sc.table_id)
    assert stopped.returncode == 0, stopped.stderr
    assert wait_until(lambda: _state(sc).get("state") == "stopped", 60, 0.1), capture.tail()
    before = len(_reads(sc))
    second = _cdc(sc, "snapshot", "start", sc.table_id, "--where", "id > 29990")
    assert second.returncode == 0, second.stderr
    assert wait_until(lambda: _state(sc).get("state") == "done", 60, 0.1), capture.tail()
    reads = [r["after"]["id"] for r in _reads(sc)]
    assert len(reads) == before + 10, (len(reads), before)  # the first read no more
    assert sorted(i for i in reads if i > 20000) == list(range(29991, 30001))


def test_a_small_tables_backfill_counts_its_rows_exactly(scenario: Scenario) -> None:
    """The planner assumes ten pages (~880 rows) of a table never analyzed: `cdc snapshot
    status` showed "of ~880" for a five-row table."""
    sc = scenario
    sc.execute("INSERT INTO items SELECT g, 'n', 1, 1.00 FROM generate_series(1, 5) g")
    sc.env["CDC_POSTGRES__SNAPSHOT_MODE"] = "never"
    sc.start("capture")
    started = _cdc(sc, "snapshot", "start", sc.table_id, "--where", "id > 1")
    assert started.returncode == 0, started.stderr
    assert wait_until(lambda: _state(sc).get("state") == "done", 60, 0.2), (
        sc.processes["capture"].tail())
    assert _state(sc)["estimate"] == 4  # the filter's rows, counted
