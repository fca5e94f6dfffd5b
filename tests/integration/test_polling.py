"""Query-based polling (``capture.source: polling``) against real PostgreSQL, Kafka and the
search index: what it publishes, what a crash costs, and the limits the README states."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import orjson
import psycopg2
import pytest
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from pipeline.harness import PipelineProcess, table_rows, wait_until
from pipeline.kafka.client import client_config
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration


def _polled(sc: Scenario, **settings: str) -> None:
    """Turn the scenario's table into a polled one: timestamps set by the database on every
    insert and update, a created_at for op c, a deleted_at for soft deletes."""
    sc.execute("ALTER TABLE items ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now(), "
               "ADD COLUMN created_at timestamptz NOT NULL DEFAULT now(), "
               "ADD COLUMN deleted_at timestamptz")
    sc.execute(f"CREATE FUNCTION {sc.schema}.touch() RETURNS trigger LANGUAGE plpgsql AS "
               "$$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$")
    sc.execute(f"CREATE TRIGGER touch BEFORE UPDATE ON items "
               f"FOR EACH ROW EXECUTE FUNCTION {sc.schema}.touch()")
    sc.execute("CREATE INDEX ON items (updated_at, id)")
    sc.env.update({
        "CDC_CAPTURE__SOURCE": "polling",
        "CDC_POLLING__INTERVAL_S": "0.2",
        "CDC_POLLING__SAFETY_LAG_S": "0.5",
        "CDC_POLLING__CREATED_COLUMN": "created_at",
        "CDC_POLLING__SOFT_DELETE_COLUMN": "deleted_at",
        **settings,
    })


def _capture(sc: Scenario, name: str = "capture") -> PipelineProcess:
    proc = PipelineProcess("capture", sc.env, sc.work / f"{name}.log")
    sc.processes[name] = proc
    return proc


def _records(sc: Scenario) -> list[tuple[Any, Any]]:
    """Every (key, value) of the raw topic, decoded; value None for a tombstone."""
    return [(orjson.loads(m.key()), None if m.value() is None else orjson.loads(m.value()))
            for m in sc.read_topic(sc.topic)]


def _wait_records(sc: Scenario, want: int, timeout: float = 60) -> list[tuple[Any, Any]]:
    found: list[tuple[Any, Any]] = []

    def enough() -> bool:
        nonlocal found
        found = _records(sc)
        return len(found) >= want

    wait_until(enough, timeout, 0.5)
    return found


def _live_rows(sc: Scenario) -> dict[str, Any]:
    return table_rows(sc.dsn, (
        "SELECT id::text, jsonb_build_object('id', id, 'name', name, 'qty', qty, "
        f"'price', price::text) FROM {sc.schema}.items WHERE deleted_at IS NULL"))


def _saved_position(sc: Scenario) -> dict[str, Any] | None:
    from pipeline.config import load_settings
    from pipeline.sources.polling.status import offset_store

    return offset_store(load_settings(None, sc.env)).load()


def test_inserts_updates_and_soft_deletes_reach_kafka_and_the_index(scenario: Scenario) -> None:
    sc = scenario
    _polled(sc)
    _capture(sc)
    sc.start("worker")
    sc.execute("INSERT INTO items (id, name, qty, price) VALUES (1, 'apple', 3, 1.50), "
               "(2, 'pear', 4, 2.00), (3, 'plum', 5, 0.75)")
    assert wait_until(lambda: sc.indexed() == _live_rows(sc), 120, 0.5), \
        sc.processes["worker"].tail()
    sc.execute("UPDATE items SET qty = 30 WHERE id = 1")
    sc.execute("UPDATE items SET deleted_at = now() WHERE id = 2")
    assert wait_until(lambda: sc.indexed() == _live_rows(sc) and len(sc.indexed()) == 2, 60,
                      0.5), sc.processes["capture"].tail()
    assert sc.indexed()["1"]["qty"] == 30

    records = _records(sc)
    ops = [(key["id"], value and value["op"]) for key, value in records]
    assert sorted(ops, key=lambda o: (o[0], o[1] or "z")) == [
        (1, "c"), (1, "u"), (2, "c"), (2, "d"), (2, None), (3, "c")]
    update = next(v for k, v in records if v and v["op"] == "u")
    assert update["source"]["connector"] == "postgresql"
    assert update["after"]["price"] == "1.50"  # numeric as the logical source writes it
    assert update["after"]["updated_at"].endswith("Z")
    # The position follows the timestamp: the update ranks above the insert of its row.
    creates = {k["id"]: v for k, v in records if v and v["op"] == "c"}
    assert update["source"]["lsn"] > creates[1]["source"]["lsn"]
    delete = next(v for k, v in records if v and v["op"] == "d")
    assert delete["before"]["id"] == 2 and delete["after"] is None


def test_values_are_the_texts_the_logical_source_reads(scenario: Scenario) -> None:
    """Polling read every column cast to text: each boolean true came out false (so a
    boolean soft delete never fired, and keys (a, flag) collided), inet gained its mask
    length and char(n) lost its padding. It now reads each type's output text."""
    sc = scenario
    sc.execute("ALTER TABLE items ADD COLUMN flag boolean, ADD COLUMN ip inet, "
               "ADD COLUMN code char(4), ADD COLUMN gone boolean NOT NULL DEFAULT false")
    _polled(sc, CDC_POLLING__SOFT_DELETE_COLUMN="gone")
    _capture(sc)
    sc.execute("INSERT INTO items (id, name, qty, price, flag, ip, code) VALUES "
               "(1, 'a', 1, 1, true, '0.0.0.0', 'ab'), (2, 'b', 2, 2, false, '2001:db8::1', "
               "NULL), (3, 'c', 3, 3, NULL, NULL, '')")
    records = _wait_records(sc, 3)
    after = {v["after"]["id"]: v["after"] for _k, v in records if v and v["op"] == "c"}
    assert [(after[i]["flag"], after[i]["ip"], after[i]["code"]) for i in (1, 2, 3)] == [
        (True, "0.0.0.0", "ab  "), (False, "2001:db8::1", None), (None, None, "    ")]
    sc.execute("UPDATE items SET gone = true WHERE id = 1")
    records = _wait_records(sc, 5)  # its delete and tombstone
    assert [k["id"] for k, v in records if v and v["op"] == "d"] == [1]


def test_a_column_type_change_is_read_with_the_new_type(scenario: Scenario) -> None:
    """Polling re-read the catalog every 5 minutes: after ALTER COLUMN qty TYPE text the
    value '0042' was published as the integer 42 until then."""
    sc = scenario
    _polled(sc)
    _capture(sc)
    sc.execute("INSERT INTO items (id, name, qty, price) VALUES (1, 'a', 3, 1)")
    assert len(_wait_records(sc, 1)) == 1
    # one transaction: no round between the two can look at the columns (a first look
    # after the ALTER took its columns as the ones the converters were made of)
    sc.execute("ALTER TABLE items ALTER COLUMN qty TYPE text; "
               "UPDATE items SET qty = '0042' WHERE id = 1")
    records = _wait_records(sc, 2)
    update = next(v for _k, v in records if v and v["op"] == "u")
    assert update["after"]["qty"] == "0042"


def test_rows_sharing_one_timestamp_across_batch_boundaries_are_all_published(
    scenario: Scenario,
) -> None:
    """53 rows written by one transaction share its now(); batches of 7 end among them. Keys
    10, 100, ... sort before 9 as text: the keyset must follow the column's own order."""
    sc = scenario
    _polled(sc, CDC_POLLING__BATCH_SIZE="7")
    sc.execute("INSERT INTO items (id, name, qty, price) "
               "SELECT g, 'same', g, 1 FROM generate_series(1, 53) g")
    _capture(sc)
    records = _wait_records(sc, 53)
    time.sleep(2)  # more polls: nothing is published twice in steady state
    records = _records(sc)
    ids = sorted(key["id"] for key, _value in records)
    assert ids == list(range(1, 54))
    assert len({v["after"]["updated_at"] for _k, v in records}) == 1


def test_kill_9_mid_workload_loses_nothing(scenario: Scenario) -> None:
    """Writers insert and update rows in short transactions while the poller is killed with
    SIGKILL twice; after each restart from the watermark kept in Kafka, the newest record of
    every row is the row as it is."""
    sc = scenario
    _polled(sc, CDC_POLLING__BATCH_SIZE="50", PYTHONUNBUFFERED="1")  # logs survive SIGKILL
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(seed: int) -> None:
        rng = random.Random(seed)
        conn = psycopg2.connect(sc.dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                n = 0
                while not stop.is_set():
                    n += 1
                    row_id = seed * 100_000 + n
                    cur.execute(f"INSERT INTO {sc.table_id} (id, name, qty, price) "
                                "VALUES (%s, 'new', 0, 1)", (row_id,))
                    cur.execute(f"UPDATE {sc.table_id} SET qty = qty + 1, name = 'upd' "
                                "WHERE id = %s", (seed * 100_000 + rng.randint(1, n),))
                    time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            conn.close()

    writers = [threading.Thread(target=write, args=(s,)) for s in (1, 2)]
    for w in writers:
        w.start()
    try:
        for round_ in range(2):
            proc = _capture(sc, f"capture-{round_}")
            want = 50 * (round_ + 1)
            assert wait_until(lambda: len(sc.read_topic(sc.topic)) > want, 60)  # noqa: B023
            time.sleep(1.5)
            proc.kill()
        _capture(sc, "capture-last")
        time.sleep(2)
    finally:
        stop.set()
        for w in writers:
            w.join()
    assert not errors, errors
    # Each restart resumed at the watermark kept in Kafka, not from the first row.
    for name in ("capture-1", "capture-last"):
        log = sc.processes[name].log.read_text()
        assert f"polling {sc.table_id} by (updated_at, id) after 20" in log, log
    expected = table_rows(sc.dsn, (
        "SELECT id::text, jsonb_build_object('name', name, 'qty', qty) "
        f"FROM {sc.table_id}"))

    def newest() -> dict[str, Any]:
        latest: dict[str, Any] = {}
        for key, value in _records(sc):
            held = latest.get(str(key["id"]))
            if value is not None and (held is None or
                                      value["source"]["lsn"] >= held["source"]["lsn"]):
                latest[str(key["id"])] = value
        return {k: {"name": v["after"]["name"], "qty": v["after"]["qty"]}
                for k, v in latest.items()}

    assert wait_until(lambda: newest() == expected, 60, 1), \
        [k for k in expected if newest().get(k) != expected[k]][:10]
    assert len(expected) > 100


def test_the_watermark_is_saved_only_after_kafka_acknowledged(scenario: Scenario) -> None:
    """The raw topic refuses records over 2 kB. A batch holding one refused record is never
    confirmed: the saved watermark stays at the last batch Kafka took, capture stops, and
    once the topic takes the record a restart publishes it and what came after."""
    sc = scenario
    _polled(sc)
    admin = AdminClient(client_config(sc.settings.kafka))
    created = admin.create_topics([NewTopic(sc.topic, 3, 1,
                                            config={"max.message.bytes": "2000"})])
    created[sc.topic].result(30)
    sc.execute("INSERT INTO items (id, name, qty, price) VALUES (1, 'small', 1, 1)")
    proc = _capture(sc)
    _wait_records(sc, 1)
    assert wait_until(lambda: _saved_position(sc) is not None, 30)
    before = _saved_position(sc)
    assert before is not None
    assert before["tables"][sc.table_id]["key"] == ["1"]
    sc.execute("INSERT INTO items (id, name, qty, price, note) "
               "VALUES (2, 'big', 1, 1, (SELECT string_agg(md5(g::text), '') "
               "FROM generate_series(1, 400) g))")  # 12 kB that lz4 cannot shrink to 2
    sc.execute("INSERT INTO items (id, name, qty, price) VALUES (3, 'after', 1, 1)")
    assert wait_until(lambda: not proc.alive(), 60), proc.tail()
    assert "refused" in proc.tail()
    assert _saved_position(sc) == before  # never past the refused record

    larger = ConfigEntry("max.message.bytes", "1048588",
                         incremental_operation=AlterConfigOpType.SET)
    altered = admin.incremental_alter_configs([ConfigResource(
        ConfigResource.Type.TOPIC, sc.topic, incremental_configs=[larger])])
    for future in altered.values():
        future.result(30)
    _capture(sc, "capture-again")
    records = _wait_records(sc, 3)
    # Row 3 was acknowledged in the refused batch and is published again (at least once).
    assert {k["id"] for k, v in records if v is not None} == {1, 2, 3}
    assert wait_until(
        lambda: (_saved_position(sc) or {}).get("tables", {}).get(sc.table_id, {})
        .get("key") == ["3"], 30)
    from pipeline.config import load_settings
    from pipeline.status import render_status

    status = render_status(load_settings(None, sc.env))
    assert f"polling {sc.table_id}: published up to (updated_at, id) = (" in status
    assert ", 3)" in status


@pytest.mark.parametrize("mode", ["lag", "horizon"])
def test_a_transaction_longer_than_the_safety_lag(scenario: Scenario, mode: str) -> None:
    """A transaction's now() is its start. One that stays open longer than the safety lag
    writes a row whose timestamp the watermark has already passed when it commits: mode lag
    misses it (the documented limit), mode horizon holds the bound at the transaction's
    start and publishes it."""
    sc = scenario
    _polled(sc, CDC_POLLING__MODE=mode, CDC_POLLING__SAFETY_LAG_S="0.3")
    _capture(sc)
    sc.execute("INSERT INTO items (id, name, qty, price) VALUES (1, 'first', 1, 1)")
    _wait_records(sc, 1)
    slow = psycopg2.connect(sc.dsn)
    try:
        with slow.cursor() as cur:
            cur.execute("SELECT 1")  # the transaction (and its now()) starts here
            time.sleep(2)
            cur.execute(f"INSERT INTO {sc.table_id} (id, name, qty, price) "
                        "VALUES (2, 'slow', 1, 1)")
            sc.execute("INSERT INTO items (id, name, qty, price) VALUES (3, 'later', 1, 1)")
            time.sleep(2)
            published = {k["id"] for k, _v in _records(sc)}
            if mode == "horizon":  # held back behind the open transaction's start
                assert published == {1}
                assert max(sc.gauges("cdc_polling_bound_lag_seconds", "capture")) > 1
            else:
                assert 3 in published
        slow.commit()
    finally:
        slow.close()
    sc.execute("INSERT INTO items (id, name, qty, price) VALUES (4, 'last', 1, 1)")
    _wait_records(sc, 3 if mode == "lag" else 4)
    time.sleep(2)
    published = sorted(k["id"] for k, _v in _records(sc))
    assert published == ([1, 3, 4] if mode == "lag" else [1, 2, 3, 4])


def test_rows_with_a_null_timestamp_are_reported(scenario: Scenario) -> None:
    sc = scenario
    sc.execute("ALTER TABLE items ADD COLUMN changed timestamp")
    sc.execute("INSERT INTO items (id, name, changed) VALUES (1, 'seen', '2026-01-01 10:00'), "
               "(2, 'never', NULL), (3, 'never', NULL)")
    sc.env.update({"CDC_CAPTURE__SOURCE": "polling", "CDC_POLLING__TIMESTAMP_COLUMN": "changed",
                   "CDC_POLLING__TIME_ZONE": "Europe/Paris", "CDC_POLLING__INTERVAL_S": "0.2"})
    proc = _capture(sc)
    records = _wait_records(sc, 1)
    assert wait_until(lambda: sc.gauges("cdc_polling_rows_never_seen", "capture") == [2], 30)
    assert "2 rows have changed NULL and are never polled" in proc.tail()
    assert [k["id"] for k, _v in records] == [1]
    assert records[0][1]["op"] == "u"  # no created_column: polling cannot tell an insert


@pytest.mark.parametrize(("setting", "ddl", "message"), [
    ({}, "CREATE TABLE {s}.bad (id int, updated_at timestamptz)", "has no primary key"),
    ({}, "CREATE TABLE {s}.bad (id int PRIMARY KEY, changed timestamptz)",
     "polling.timestamp_column: table '{s}.bad' has no column 'updated_at'"),
    ({}, "CREATE TABLE {s}.bad (id int PRIMARY KEY, updated_at bigint)",
     "polling.timestamp_column: column 'updated_at' of '{s}.bad' is of type int8"),
    ({"CDC_POLLING__SOFT_DELETE_COLUMN": "gone"},
     "CREATE TABLE {s}.bad (id int PRIMARY KEY, updated_at timestamptz)",
     "polling.soft_delete_column: table '{s}.bad' has no column 'gone'"),
])
def test_a_table_that_cannot_be_polled_is_refused_naming_the_setting(
    scenario: Scenario, setting: dict[str, str], ddl: str, message: str,
) -> None:
    sc = scenario
    sc.execute(ddl.format(s=sc.schema))
    sc.env.update({"CDC_CAPTURE__SOURCE": "polling",
                   "CDC_POSTGRES__TABLES": f"[{sc.schema}.bad]", **setting})
    proc = _capture(sc)
    assert wait_until(lambda: not proc.alive(), 60), proc.tail()
    assert message.format(s=sc.schema) in proc.tail()
    assert proc.proc.returncode == 3


def test_a_dropped_column_is_read_again_from_the_catalog(scenario: Scenario) -> None:
    sc = scenario
    _polled(sc)
    proc = _capture(sc)
    sc.execute("INSERT INTO items (id, name, note) VALUES (1, 'with', 'a note')")
    assert _wait_records(sc, 1)[0][1]["after"]["note"] == "a note"
    sc.execute("ALTER TABLE items DROP COLUMN note")
    sc.execute("INSERT INTO items (id, name) VALUES (2, 'without')")
    records = _wait_records(sc, 2)
    assert proc.alive(), proc.tail()
    second = next(v for k, v in records if k["id"] == 2)
    assert "note" not in second["after"] and second["after"]["name"] == "without"


def test_mode_horizon_refuses_a_role_that_cannot_see_every_session(scenario: Scenario) -> None:
    sc = scenario
    _polled(sc, CDC_POLLING__MODE="horizon")
    role = f"poller_{sc.uid}"
    sc.execute(f"CREATE ROLE {role} LOGIN")
    try:
        sc.env["CDC_POSTGRES__DSN"] = f"{sc.dsn} user={role}"
        proc = _capture(sc)
        assert wait_until(lambda: not proc.alive(), 60), proc.tail()
        assert "GRANT pg_read_all_stats" in proc.tail()
        assert proc.proc.returncode == 3
    finally:
        sc.execute(f"DROP ROLE {role}")


def test_a_watermark_of_other_columns_restarts_the_table_from_its_first_row(
    scenario: Scenario,
) -> None:
    """The saved watermark is a position in (updated_at, id) order; polled by created_at
    instead, it would skip or repeat arbitrary rows: the table is read again from the start."""
    sc = scenario
    _polled(sc)
    sc.execute("INSERT INTO items (id, name) VALUES (1, 'a'), (2, 'b')")
    first = _capture(sc)
    _wait_records(sc, 2)
    assert wait_until(lambda: _saved_position(sc) is not None, 30)
    first.stop()
    sc.env["CDC_POLLING__TIMESTAMP_COLUMN"] = "created_at"
    again = _capture(sc, "capture-again")
    records = _wait_records(sc, 4)
    assert sorted(k["id"] for k, _v in records) == [1, 1, 2, 2]
    assert "polling it from its first row again" in again.tail()


def test_the_missing_index_advice_is_sql_postgresql_runs(
    scenario: Scenario, caplog: pytest.LogCaptureFixture,
) -> None:
    """The advice was built by joining names: a mixed-case table or a key column with a
    space made the advised CREATE INDEX invalid SQL."""
    from pipeline.config import load_settings
    from pipeline.sources.polling.catalog import describe
    from pipeline.sources.postgres.types import TypeResolver
    from pipeline.sources.postgres.unconverted import UnconvertedValues

    sc = scenario
    sc.execute(f'CREATE TABLE {sc.schema}."Odd" ("K 2" int, "Id" int, '
               '"Updated At" timestamptz, PRIMARY KEY ("Id", "K 2"))')
    settings = load_settings(None, {**sc.env, "CDC_CAPTURE__SOURCE": "polling",
                                    "CDC_POLLING__TIMESTAMP_COLUMN": "Updated At"})
    conn = sc.connect()
    conn.autocommit = True

    def advice() -> str | None:
        caplog.clear()
        with caplog.at_level("WARNING", "pipeline.sources.polling.catalog"), \
                conn.cursor() as cur:
            describe(cur, f"{sc.schema}.Odd", settings.postgres, settings.polling,
                     TypeResolver(), UnconvertedValues())
        found = [r.getMessage() for r in caplog.records if "no index" in r.getMessage()]
        return found[0].split("whole table. ", 1)[1] if found else None

    statement = advice()
    assert statement == f'CREATE INDEX ON "{sc.schema}"."Odd" ("Updated At", "Id", "K 2")'
    with conn.cursor() as cur:
        cur.execute(statement)
    assert advice() is None  # the index it made is the one polling looks for
    conn.close()
