"""Incremental backfills of a MariaDB capture (mysql.signal_table; `cdc snapshot start`)
against the stack's real MariaDB 10.11 and Kafka: a backfill racing updates, deletes and
re-inserts of the keys it reads ends with the raw topic's last value per key equal to the
table; a capture killed (-9) mid-backfill resumes from its last finished chunk."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.capture.offsets import OffsetStore
from pipeline.config import load_settings
from pipeline.harness import wait_until
from pipeline.sources.mysql.backfill_control import load_state
from tests.integration.mariadb_scenario import ITEMS_DDL, MariadbScenario

pytestmark = pytest.mark.integration

SIGNAL_DDL = ("CREATE TABLE {db}.cdc_signal (id VARCHAR(42) PRIMARY KEY, "
              "type VARCHAR(32) NOT NULL, data VARCHAR(2048))")



@pytest.fixture
def maria(mariadb: Any, tmp_path: Path) -> Iterator[MariadbScenario]:
    sc = MariadbScenario(mariadb, tmp_path)
    sc.execute(ITEMS_DDL)
    sc.execute(SIGNAL_DDL)
    sc.execute("GRANT INSERT ON {db}.cdc_signal TO 'cdc'@'%'")
    # Existing rows reach Kafka only through the backfill.
    sc.env.update({"CDC_MYSQL__SIGNAL_TABLE": f"{sc.db}.cdc_signal",
                   "CDC_MYSQL__SNAPSHOT_MODE": "never"})
    sc.settings = load_settings(None, sc.env)
    yield sc
    sc.close()
    s = sc.settings.mysql
    OffsetStore(sc.settings.kafka, {"source": "mysql-backfill", "server": s.name,
                                    "server_id": str(s.server_id)}).forget()


def _cdc(sc: MariadbScenario, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args],
                          env={**os.environ, **sc.env}, capture_output=True, text=True,
                          timeout=120, check=False)


def _fill(sc: MariadbScenario, rows: int) -> None:
    sc.execute(f"INSERT INTO {{db}}.items SELECT seq, CONCAT('existing ', seq), seq, "
               f"seq * 1.5 FROM {{db}}.seq_1_to_{rows}")


def _state(sc: MariadbScenario) -> dict[str, Any]:
    tables = load_state(sc.settings).get("tables", [])
    return next((t for t in tables if t["table"] == sc.table_id), {})


def _last_per_key(sc: MariadbScenario) -> dict[str, Any]:
    """The raw topic folded as a compacted topic would be: each key's last record (a key
    whose last record is a delete or its tombstone is gone)."""
    last: dict[str, Any] = {}
    for key, value, _ in sc.records():  # per key, in order: one key is one partition
        if key is None:
            continue
        row = None if value is None else value["after"]
        if row is None:
            last.pop(str(key["id"]), None)
        else:
            last[str(key["id"])] = {c: row.get(c) for c in ("id", "name", "qty", "price")}
    return last


def _expected(sc: MariadbScenario) -> dict[str, Any]:
    rows = sc.query("SELECT id, name, qty, price FROM {db}.items")
    return {str(i): {"id": i, "name": n, "qty": q,
                     "price": None if p is None else str(Decimal(p))} for i, n, q, p in rows}


class _Writer(threading.Thread):
    """Updates, deletes and re-inserts random keys of the table until stopped."""

    def __init__(self, sc: MariadbScenario, rows: int) -> None:
        super().__init__(daemon=True)
        self.sc, self.rows = sc, rows
        self.stop = threading.Event()
        self.changes = 0

    def run(self) -> None:
        conn = self.sc.connect()
        conn.autocommit(False)
        rnd = random.Random(7)
        table = self.sc.table_id
        with conn.cursor() as cur:
            while not self.stop.is_set():
                ids = [rnd.randint(1, self.rows) for _ in range(20)]
                cur.execute(f"UPDATE {table} SET qty = qty + 1, name = CONCAT('upd ', id) "
                            f"WHERE id IN ({', '.join(['%s'] * len(ids))})", ids)
                cur.execute(f"DELETE FROM {table} WHERE id = %s", (ids[0],))
                cur.execute(f"INSERT IGNORE INTO {table} VALUES (%s, 'back', 1, 1)",
                            (ids[1],))
                conn.commit()
                self.changes += 1
                time.sleep(0.002)
        conn.close()


def test_a_backfill_racing_writers_ends_with_the_topic_equal_to_the_table(
    maria: MariadbScenario,
) -> None:
    rows = 6_000
    _fill(maria, rows)
    maria.start("capture")
    writer = _Writer(maria, rows)
    writer.start()
    try:
        time.sleep(0.5)
        started = _cdc(maria, "snapshot", "start", maria.table_id, "--chunk-size", "250")
        assert started.returncode == 0, started.stdout + started.stderr
        assert wait_until(lambda: _state(maria).get("state") == "done", 120), \
            (_state(maria), maria.processes["capture"].tail())
    finally:
        writer.stop.set()
        writer.join(10)
    assert writer.changes > 50, "the writer must race the backfill"
    status = _cdc(maria, "snapshot", "status")
    assert status.returncode == 0 and "done" in status.stdout, status.stdout + status.stderr
    expected = _expected(maria)
    assert wait_until(lambda: _last_per_key(maria) == expected, 60), (
        len(_last_per_key(maria)), len(expected))
    reads = [v for v in maria.changes() if v["op"] == "r"]
    assert reads and all(v["source"]["snapshot"] == "incremental" for v in reads)
    # Chunk rows whose key the stream changed inside their window were left to the stream.
    assert len(reads) < rows
    # The watermarks are in the binlog, not in a topic.
    assert not any(v["source"]["table"] == "cdc_signal" for v in maria.changes())


def test_a_backfill_killed_mid_way_resumes_from_its_last_finished_chunk(
    maria: MariadbScenario,
) -> None:
    rows = 40_000
    _fill(maria, rows)
    capture = maria.start("capture")
    started = _cdc(maria, "snapshot", "start", maria.table_id, "--chunk-size", "500")
    assert started.returncode == 0, started.stdout + started.stderr
    assert wait_until(lambda: _state(maria).get("rows", 0) >= 5_000, 90), _state(maria)
    capture.kill()  # kill -9 in the middle of the backfill
    saved = _state(maria)
    assert saved["state"] == "running" and saved["rows"] < rows, saved
    maria.execute("UPDATE {db}.items SET qty = -1 WHERE id = %s", rows)  # ahead of the backfill
    restarted = _restart(maria)
    assert wait_until(lambda: _state(maria).get("state") == "done", 120), \
        (_state(maria), restarted.tail())
    assert "resuming the backfill of" in restarted.tail(400)
    expected = _expected(maria)
    assert wait_until(lambda: _last_per_key(maria) == expected, 60)
    reads = [v for v in maria.changes() if v["op"] == "r"]
    # Resumed after the saved chunk: the rows read again are at most the chunks published
    # but not yet confirmed when it was killed, never the table from its start.
    assert rows <= len(reads) < rows + saved["rows"], (len(reads), saved)


def _restart(sc: MariadbScenario) -> Any:
    from pipeline.harness import PipelineProcess

    proc = PipelineProcess("capture", sc.env, sc.work / "capture-2.log")
    sc.processes["capture-2"] = proc
    assert wait_until(lambda: "reading the binlog from" in proc.tail(200)
                      or not proc.alive(), 60), proc.tail()
    return proc


def test_backfill_requests_that_cannot_work_are_refused_with_the_reason(
    maria: MariadbScenario,
) -> None:
    maria.start("capture")
    other = _cdc(maria, "snapshot", "start", f"{maria.db}.nope")
    assert other.returncode != 0 and "not captured" in other.stderr + other.stdout
    bad = _cdc(maria, "snapshot", "start", maria.table_id, "--where", "no_such_column > 1")
    assert bad.returncode != 0 and "refuses the filter" in bad.stderr + bad.stdout
    assert maria.query("SELECT COUNT(*) FROM {db}.cdc_signal") == [(0,)]  # nothing sent
