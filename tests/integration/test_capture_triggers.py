"""Trigger-based capture against real PostgreSQL, Kafka and Elasticsearch: `cdc triggers
install` then `cdc capture` with ``capture.source: triggers``."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg2
import pytest

from pipeline.config import load_settings
from pipeline.harness import PipelineProcess, slot_active, wait_until
from pipeline.sources.triggers import ddl
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration


@pytest.fixture
def trig(stack_info: object, tmp_path: Path) -> Iterator[Scenario]:
    sc = Scenario(stack_info, tmp_path)
    sc.env["CDC_CAPTURE__SOURCE"] = "triggers"
    sc.env["CDC_TRIGGERS__LOG_SCHEMA"] = f"cdc_{sc.uid}"
    sc.env["CDC_TRIGGERS__POLL_INTERVAL_S"] = "0.05"
    _reload(sc)
    yield sc
    for proc in sc.processes.values():
        proc.stop()
    with contextlib.suppress(Exception):
        ddl.uninstall(sc.settings)
    sc.close()


def _reload(sc: Scenario) -> None:
    sc.settings = load_settings(None, sc.env)


def _cdc(sc: Scenario, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args],
                          env={**os.environ, **sc.env}, input=stdin, capture_output=True,
                          text=True, timeout=120)


def _install(sc: Scenario) -> None:
    done = _cdc(sc, "triggers", "install")
    assert done.returncode == 0, done.stderr


def _start_relay(sc: Scenario, name: str = "capture") -> PipelineProcess:
    proc = PipelineProcess("capture", sc.env, sc.work / f"{name}.log")
    sc.processes[name] = proc
    assert wait_until(lambda: "relaying" in proc.tail(200) or not proc.alive(), 60)
    assert proc.alive(), proc.tail()
    return proc



def _keys(sc: Scenario, want: int, timeout: float = 60) -> set[int]:
    return {e["after"]["id"] for e in sc.values(sc.topic, want, timeout) if e["op"] == "c"}


def _log_rows(sc: Scenario) -> int:
    conn = sc.connect()
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM cdc_{sc.uid}.change_log")
        (rows,) = cur.fetchone()
    conn.close()
    return int(rows)


def test_changes_reach_kafka_and_the_index(trig: Scenario) -> None:
    sc = trig
    _install(sc)
    _start_relay(sc)
    sc.start("worker")
    sc.execute("INSERT INTO items VALUES (1, 'apple', 3, 11.00), (2, 'pear', 1, 2.50)")
    sc.execute("UPDATE items SET price = 12.00, qty = 4 WHERE id = 1")
    sc.execute("DELETE FROM items WHERE id = 2")
    sc.execute("UPDATE items SET id = 5 WHERE id = 1")  # a key change: delete + create
    assert sc.converged(90), sc.processes["worker"].tail()
    assert sc.indexed() == {"5": {"id": 5, "name": "apple", "qty": 4, "price": "12.00"}}
    sc.execute("TRUNCATE items")
    sc.execute("INSERT INTO items VALUES (7, 'fig', 1, 1.00)")
    assert sc.converged(90), sc.processes["worker"].tail()
    assert set(sc.indexed()) == {"7"}

    events = sc.values(sc.topic, 10)
    ops = [e["op"] for e in events]
    assert ops.count("t") == 3  # one copy per partition
    assert sorted(ops) == sorted(["c", "c", "u", "d", "d", "c", "t", "t", "t", "c"])
    # Each delete is followed by a tombstone of its key, as the logical source writes it.
    assert sum(1 for m in sc.read_topic(sc.topic) if m.value() is None) == 2
    update = next(e for e in events if e["op"] == "u")
    assert update["before"] == {"id": 1, "name": "apple", "qty": 3, "price": "11.00",
                                "note": None}
    assert update["after"]["price"] == "12.00"
    source = update["source"]
    assert source["connector"] == "postgresql" and source["table"] == "items"
    assert orjson.loads(source["sequence"]) == [None, str(source["lsn"])]
    # relayed rows are deleted once Kafka acknowledged them
    assert wait_until(lambda: _log_rows(sc) == 0, 30)


def test_overlapping_transactions_committing_out_of_sequence_are_all_published(
    trig: Scenario,
) -> None:
    """T1 writes log row n and stays open; T2 writes row n+1 and commits; the relay runs;
    then T1 commits. An id-ordered relay ("everything after the highest id sent") would
    skip T1's row for good. Both orders of transaction ids are covered: T2 started before
    T1 (its row is relayed while T1 is open) and after (it waits behind the horizon)."""
    sc = trig
    _install(sc)
    _start_relay(sc)
    early = sc.connect()  # takes its transaction id before T1
    t1 = sc.connect()
    late = sc.connect()  # takes its transaction id after T1
    with early.cursor() as cur:
        cur.execute("SELECT pg_current_xact_id()")
    with t1.cursor() as cur:
        cur.execute(f"INSERT INTO {sc.schema}.items VALUES (1, 't1', 1, 1)")
        cur.execute("SELECT pg_backend_pid()")
        (t1_pid,) = cur.fetchone()
    with late.cursor() as cur:
        cur.execute("SELECT pg_current_xact_id()")
    for conn, key in ((early, 2), (late, 3)):
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {sc.schema}.items VALUES (%s, 'after t1', 1, 1)", (key,))
        conn.commit()
    # The early transaction's row is published while T1 is still open ...
    assert _keys(sc, 1) == {2}
    time.sleep(1.0)  # the relay has had many rounds
    assert _keys(sc, 1, timeout=2) == {2}
    # ... the later one waits behind T1, and status names T1's session.
    shown = _cdc(sc, "triggers", "status")
    assert "1 committed changes waiting" in shown.stdout, shown.stdout + shown.stderr
    assert f"pid {t1_pid}" in shown.stdout, shown.stdout
    assert "idle in transaction" in shown.stdout, shown.stdout
    assert wait_until(lambda: sc.gauges("cdc_capture_trigger_rows_waiting") == [1.0], 30)
    overall = _cdc(sc, "status")
    assert "visibility horizon: 1 committed changes waiting" in overall.stdout, overall.stderr
    t1.commit()
    assert wait_until(lambda: _keys(sc, 3, timeout=1) == {1, 2, 3}, 60)
    assert wait_until(lambda: sc.gauges("cdc_capture_trigger_rows_waiting") == [0.0], 30)
    for conn in (early, t1, late):
        conn.close()


def _workload(sc: Scenario, rows: int) -> None:
    conn = sc.connect()
    for i in range(1, rows + 1):
        with conn, conn.cursor() as cur:
            cur.execute(f"INSERT INTO {sc.schema}.items VALUES (%s, %s, %s, 1)",
                        (i, f"item {i}", i))
        if i % 50 == 0:
            with conn, conn.cursor() as cur:
                cur.execute(f"UPDATE {sc.schema}.items SET qty = qty + 1 WHERE id <= %s", (i,))
        time.sleep(0.01)  # paced (>= 6 s for 600 rows): the kill lands mid-workload
    conn.close()


def test_relay_killed_mid_workload_loses_nothing(trig: Scenario) -> None:
    sc = trig
    _install(sc)
    relay = _start_relay(sc)
    sc.start("worker")
    load = threading.Thread(target=_workload, args=(sc, 600))
    load.start()
    time.sleep(1.5)
    relay.kill()  # SIGKILL: no flush, no final deletes
    assert load.is_alive()  # killed mid-workload
    time.sleep(0.5)
    _start_relay(sc, "capture-2")
    load.join()
    assert wait_until(lambda: _keys(sc, 600, timeout=2) == set(range(1, 601)), 90), \
        sc.processes["capture-2"].tail()
    assert sc.converged(120), sc.processes["worker"].tail()
    assert wait_until(lambda: _log_rows(sc) == 0, 30)


def _trace(sc: Scenario) -> dict[str, Any]:
    conn = sc.connect()
    log = ddl.TriggerLog.of(sc.settings.triggers)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT tgname FROM pg_trigger WHERE tgname LIKE %s ORDER BY 1",
                    (f"cdc_{sc.uid}%",))
        triggers = [r[0] for r in cur.fetchall()]
        cur.execute("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = "
                    "p.pronamespace WHERE n.nspname = %s", (log.schema,))
        (functions,) = cur.fetchone()
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"cdc_{sc.uid}.change_log",))
        (table,) = cur.fetchone()
        cur.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (log.schema,))
        (schema,) = cur.fetchone()
    conn.close()
    return {"triggers": triggers, "functions": functions, "table": table, "schema": schema}


def test_install_twice_is_idempotent_and_uninstall_leaves_no_trace(trig: Scenario) -> None:
    sc = trig
    _install(sc)
    first = _trace(sc)
    _install(sc)
    assert _trace(sc) == first
    assert first["triggers"] == [f"cdc_{sc.uid}__change_log__row",
                                 f"cdc_{sc.uid}__change_log__truncate"]
    assert first["table"] and first["schema"] == 1
    sc.execute("INSERT INTO items VALUES (1, 'once', 1, 1)")
    assert _log_rows(sc) == 1  # one trigger, not two
    refused = _cdc(sc, "triggers", "uninstall", stdin="n\n")
    assert refused.returncode != 0 and "1 changes not yet relayed" in refused.stdout
    assert _trace(sc) == first
    done = _cdc(sc, "triggers", "uninstall", "--yes")
    assert done.returncode == 0, done.stderr
    assert _trace(sc) == {"triggers": [], "functions": 0, "table": False, "schema": 0}
    sc.execute("INSERT INTO items VALUES (2, 'writes still work', 1, 1)")


def test_a_table_without_a_primary_key_is_refused(trig: Scenario) -> None:
    sc = trig
    sc.execute(f"CREATE TABLE {sc.schema}.nokey (id int, v text)")
    sc.env["CDC_POSTGRES__TABLES"] = f"[{sc.table_id}, {sc.schema}.nokey]"
    _reload(sc)
    done = _cdc(sc, "triggers", "install")
    assert done.returncode == 3
    assert f"table {sc.schema}.nokey has no primary key" in done.stderr
    assert "ADD PRIMARY KEY" in done.stderr
    assert _trace(sc)["triggers"] == []  # nothing half-installed


def test_capture_refuses_to_start_before_install(trig: Scenario) -> None:
    sc = trig
    proc = PipelineProcess("capture", sc.env, sc.work / "capture.log")
    sc.processes["capture"] = proc
    assert wait_until(lambda: not proc.alive(), 60)
    assert "run `cdc triggers install` first" in proc.tail()
    assert proc.proc.returncode == 3


_TYPES = (
    "CREATE TYPE {s}.mood AS ENUM ('ok', 'sad');"
    "CREATE DOMAIN {s}.pos AS numeric(8,3) CHECK (VALUE > 0);"
    "CREATE TABLE {s}.typed (id int PRIMARY KEY, n numeric(12,2), big numeric, f float8,"
    " r real, b bool, ts timestamp, tz timestamptz, d date, t time, iv interval, raw bytea,"
    " j jsonb, js json, u uuid, ints int[], texts text[], m {s}.mood, p {s}.pos, c char(3),"
    " bits bit(1), nums numeric[]);"
    "ALTER TABLE {s}.typed REPLICA IDENTITY FULL"
)
_ROWS = (
    "INSERT INTO typed VALUES (1, 12.50, 1e40, 0.1, 1.5, true, '2024-02-29 13:14:15.123456',"
    " '2024-01-02 03:04:05.5+05:30', '2024-03-01', '01:02:03', '1 day 2 hours', '\\x00ff10',"
    " '{\"a\": [1, 2.50]}', '{\"b\":  1}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',"
    " '{1,NULL,3}', '{\"a b\",\"c,d\",NULL}', 'sad', 2.5, 'ab', B'1', '{1.5,NaN}')",
    "INSERT INTO typed (id, f, tz, d) VALUES (2, 'NaN', 'infinity', '0044-03-15 BC')",
    "UPDATE typed SET n = 99.99, texts = '{}', m = 'ok', f = '-Infinity' WHERE id = 1",
    "DELETE FROM typed WHERE id = 2",
)


def test_trigger_records_carry_the_values_the_logical_source_publishes(trig: Scenario) -> None:
    """Both sources capture the same changes of a table of many types; every record's op,
    key, before, after, table and transaction id must be the same."""
    sc = trig
    sc.execute(_TYPES.format(s=sc.schema))
    table = f"{sc.schema}.typed"
    sc.env["CDC_POSTGRES__TABLES"] = f"[{table}]"
    logical_env = {**sc.env, "CDC_CAPTURE__SOURCE": "logical"}
    sc.env["CDC_KAFKA__TOPIC_PREFIX"] = f"it{sc.uid}t"
    _reload(sc)
    logical = PipelineProcess("capture", logical_env, sc.work / "logical.log")
    sc.processes["logical"] = logical
    assert wait_until(lambda: slot_active(sc.dsn, f"slot_{sc.uid}"), 60), logical.tail()
    _install(sc)
    _start_relay(sc)
    conn = sc.connect()
    with conn, conn.cursor() as cur:
        cur.execute("SET TimeZone = 'America/St_Johns'; SET DateStyle = 'SQL, DMY'; "
                    "SET extra_float_digits = 0; SET bytea_output = 'escape'")
        for statement in _ROWS:
            cur.execute(statement.replace("typed", table))
    conn.close()
    wanted = 4
    via_wal = sc.values(f"it{sc.uid}.{table}", wanted)
    via_triggers = sc.values(sc.settings.kafka.raw_topic(table), wanted)
    assert len(via_wal) == len(via_triggers) == wanted, (via_wal, via_triggers)

    def essence(event: dict[str, Any]) -> tuple[Any, ...]:
        src = event["source"]
        return (event["op"], event["before"], event["after"], src["connector"], src["db"],
                src["schema"], src["table"], src["txId"], src["snapshot"])

    def by_key(event: dict[str, Any]) -> tuple[int, int]:
        # one transaction, rows on several partitions: read order across partitions is
        # arbitrary, so order by row; a stable sort keeps each row's own (partition) order
        row = event["after"] or event["before"]
        return event["source"]["txId"], row["id"]

    assert [essence(e) for e in sorted(via_triggers, key=by_key)] == \
        [essence(e) for e in sorted(via_wal, key=by_key)]
    with contextlib.suppress(psycopg2.Error):
        conn.close()


def test_a_column_type_change_is_read_with_the_new_type(trig: Scenario) -> None:
    """The relay kept a table's converters until a restart: after ALTER COLUMN qty TYPE text
    the value '0042' was published as the integer 42."""
    sc = trig
    _install(sc)
    _start_relay(sc)
    sc.execute("INSERT INTO items VALUES (1, 'apple', 3, 11.00)")
    assert _keys(sc, 1) == {1}
    # one transaction: no round between the two can look at the columns (a first look
    # after the ALTER took its columns as the ones the converters were made of)
    sc.execute("ALTER TABLE items ALTER COLUMN qty TYPE text; "
               "UPDATE items SET qty = '0042' WHERE id = 1")
    events = sc.values(sc.topic, 2)
    update = next(e for e in events if e["op"] == "u")
    assert update["after"]["qty"] == "0042"
