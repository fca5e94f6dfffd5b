"""MariaDB binlog capture against the stack's real MariaDB 10.11, Kafka and Elasticsearch:
`cdc capture` (capture.source mysql) and a kafka-engine search worker as subprocesses."""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline import stack
from pipeline.harness import PipelineProcess, wait_until
from tests.integration.mariadb_scenario import ITEMS_DDL, MariadbScenario

pytestmark = pytest.mark.integration




TYPES_DDL = """CREATE TABLE {db}.items (
  id INT UNSIGNED PRIMARY KEY, name VARCHAR(100), qty INT, price DECIMAL(12,2),
  big BIGINT UNSIGNED, tiny TINYINT, exact DECIMAL(30,10), f FLOAT, d DOUBLE,
  flag BIT(1), bits BIT(10), color ENUM('red','green'), tags SET('a','b','c'),
  doc JSON, raw VARBINARY(16), blobby BLOB, born DATE, at_time TIME(6),
  dt DATETIME, dt6 DATETIME(6), ts TIMESTAMP(3) NULL, yr YEAR, fixed BINARY(4)
) CHARACTER SET utf8mb4"""

EXTREMES = (
    "INSERT INTO {db}.items VALUES (4294967295, %s, -2147483648, -9999999999.99, "
    "18446744073709551615, -128, 12345678901234567890.0123456789, 0.1, 1e308, b'1', "
    "b'1000000001', 'green', 'a,c', '{\"k\": [1, \"x\"]}', x'00ff10', x'', "
    "'2024-02-29', '-838:59:59.000000', '9999-12-31 23:59:59', "
    "'1970-01-01 00:00:00.000001', '2038-01-19 03:14:07.499', 2155, x'4100')"
)


def test_inserts_updates_deletes_of_many_types_reach_kafka(maria: MariadbScenario) -> None:
    maria.execute(TYPES_DDL)
    maria.start("capture")
    text = "naïve 😀 𝄞 漢字"
    maria.execute(EXTREMES, text)
    maria.execute("INSERT INTO {db}.items (id) VALUES (1)")  # every other column NULL
    maria.execute("INSERT INTO {db}.items (id, tags, exact) VALUES (2, '', 0)")
    maria.execute("UPDATE {db}.items SET name = 'renamed', qty = 7 WHERE id = 1")
    maria.execute("UPDATE {db}.items SET id = 3 WHERE id = 2")  # a primary-key change
    maria.execute("DELETE FROM {db}.items WHERE id = 1")
    assert wait_until(lambda: len(maria.changes()) == 7, 60), maria.changes()
    changes = maria.changes()
    assert [c["op"] for c in changes] == ["c", "c", "c", "u", "d", "c", "d"]

    extreme = changes[0]["after"]
    assert extreme == {
        "id": 4294967295, "name": text, "qty": -2147483648, "price": "-9999999999.99",
        "big": 18446744073709551615, "tiny": -128, "exact": "12345678901234567890.0123456789",
        "f": 0.1, "d": 1e308, "flag": True,
        "bits": base64.b64encode((0b1000000001).to_bytes(2, "little")).decode(),
        "color": "green", "tags": "a,c", "doc": '{"k": [1, "x"]}',
        "raw": base64.b64encode(b"\x00\xff\x10").decode(), "blobby": "",
        "born": 19782,  # days from 1970-01-01 to 2024-02-29
        "at_time": -(838 * 3600 + 59 * 60 + 59) * 1_000_000,
        "dt": 253402300799000,  # 9999-12-31 23:59:59 as milliseconds
        "dt6": 1, "ts": "2038-01-19T03:14:07.499Z", "yr": 2155,
        # the binlog leaves out a BINARY's trailing zero bytes; the column holds them
        "fixed": base64.b64encode(b"A\x00\x00\x00").decode(),
    }
    nulls = changes[1]["after"]
    assert nulls["id"] == 1 and all(v is None for k, v in nulls.items() if k != "id")
    assert changes[2]["after"]["tags"] == ""  # an empty SET, not NULL
    assert changes[2]["after"]["exact"] == "0.0000000000"  # never "0E-10"
    update = changes[3]
    assert update["before"]["name"] is None and update["after"]["name"] == "renamed"
    assert update["after"]["qty"] == 7
    # The key change: a delete of id 2, then a create of id 3 at the same position.
    moved_out, moved_in = changes[4], changes[5]
    assert moved_out["before"]["id"] == 2 and moved_in["after"]["id"] == 3
    assert moved_out["source"]["lsn"] == moved_in["source"]["lsn"]

    source = changes[0]["source"]
    assert source["connector"] == "mariadb" and source["db"] == maria.db
    assert source["schema"] == maria.db and source["table"] == "items"
    assert source["file"].startswith("mysql-bin.") and source["pos"] > 0
    assert source["server_id"] == 1 and source["row"] == 0
    assert source["gtid"].startswith("0-1-")
    lsns = [c["source"]["lsn"] for c in changes]
    assert lsns == sorted(lsns) and len(set(lsns)) == 6  # one shared by the key change
    keys = [k for k, v, _ in maria.records() if v is not None and v["op"] == "c"]
    assert {"id": 4294967295} in keys
    tombstones = [k for k, v, _ in maria.records() if v is None]
    assert sorted(k["id"] for k in tombstones) == [1, 2]


def test_truncate_reaches_every_partition(maria: MariadbScenario) -> None:
    maria.execute(ITEMS_DDL)
    maria.start("capture")
    maria.execute("INSERT INTO {db}.items VALUES (1, 'a', 1, 1.00)")
    maria.execute("TRUNCATE TABLE {db}.items")
    assert wait_until(lambda: sum(1 for _, v, _ in maria.records()
                                  if v and v["op"] == "t") == 3, 60), maria.records()
    partitions = {p for _, v, p in maria.records() if v and v["op"] == "t"}
    assert partitions == {0, 1, 2}


def _workload(maria: MariadbScenario, rows: int, stop: threading.Event,
              pause_s: float = 0.01) -> None:
    for i in range(1, rows + 1):
        if stop.is_set():
            return
        maria.execute("INSERT INTO {db}.items VALUES (%s, %s, %s, %s)",
                      i, f"item {i}", i, f"{i}.50")
        if i % 3 == 0:
            maria.execute("UPDATE {db}.items SET qty = qty + 100 WHERE id = %s", i - 1)
        if i % 7 == 0:
            maria.execute("DELETE FROM {db}.items WHERE id = %s", i - 2)
        time.sleep(pause_s)


def test_index_equals_table_through_a_kafka_engine_worker(maria: MariadbScenario) -> None:
    maria.execute(ITEMS_DDL)
    maria.start("capture")
    maria.start("worker")
    _workload(maria, 60, threading.Event(), 0)
    maria.execute("UPDATE {db}.items SET name = 'ü 😀', price = NULL WHERE id = 10")
    assert maria.converged(), (maria.indexed(), maria.expected())
    assert maria.indexed()["10"]["name"] == "ü 😀"


def test_capture_killed_mid_workload_loses_nothing(maria: MariadbScenario) -> None:
    maria.execute(ITEMS_DDL)
    capture = maria.start("capture")
    maria.start("worker")
    stop = threading.Event()
    writer = threading.Thread(target=_workload, args=(maria, 300, stop))
    writer.start()
    try:
        assert wait_until(lambda: len(maria.query("SELECT id FROM {db}.items")) > 60, 60)
        capture.kill()  # kill -9 while rows keep coming
        assert wait_until(lambda: len(maria.query("SELECT id FROM {db}.items")) > 120, 60)
        maria.start("capture")
    finally:
        writer.join(120)
    assert maria.converged(), (len(maria.indexed()), len(maria.expected()))


def test_mariadb_restart_resumes(maria: MariadbScenario) -> None:
    maria.execute(ITEMS_DDL)
    capture = maria.start("capture")
    maria.start("worker")
    _workload(maria, 40, threading.Event(), 0)
    stack.stop_service("mariadb")
    try:
        time.sleep(3)
        assert capture.alive(), capture.tail()  # it waits and retries, it does not stop
    finally:
        stack.start_service("mariadb")
    maria.execute("INSERT INTO {db}.items VALUES (1000, 'after restart', 1, 1.00)")
    maria.execute("UPDATE {db}.items SET name = 'changed after restart' WHERE id = 5")
    assert maria.converged(), (maria.indexed(), maria.expected())
    assert "interrupted, resuming" in capture.tail(400)


def test_alter_table_between_two_updates_decodes_both(maria: MariadbScenario) -> None:
    maria.execute(ITEMS_DDL)
    maria.start("capture")
    maria.execute("INSERT INTO {db}.items VALUES (1, 'one', 1, 1.00)")
    maria.execute("UPDATE {db}.items SET qty = 2 WHERE id = 1")
    maria.execute("ALTER TABLE {db}.items ADD COLUMN color VARCHAR(10) DEFAULT 'blue' "
                  "AFTER name, DROP COLUMN price")
    maria.execute("UPDATE {db}.items SET qty = 3 WHERE id = 1")
    maria.execute("ALTER TABLE {db}.items RENAME COLUMN name TO title")
    maria.execute("UPDATE {db}.items SET qty = 4 WHERE id = 1")
    assert wait_until(lambda: len(maria.changes()) == 4, 60), maria.changes()
    _, before_alter, after_add, after_rename = [c["after"] for c in maria.changes()]
    assert before_alter == {"id": 1, "name": "one", "qty": 2, "price": "1.00"}
    assert after_add == {"id": 1, "name": "one", "color": "blue", "qty": 3}
    assert after_rename == {"id": 1, "title": "one", "color": "blue", "qty": 4}


def test_purged_binlog_stops_with_the_remedy(maria: MariadbScenario) -> None:
    maria.execute(ITEMS_DDL)
    capture = maria.start("capture")
    maria.execute("INSERT INTO {db}.items VALUES (1, 'one', 1, 1.00)")
    assert wait_until(lambda: len(maria.changes()) == 1, 60)
    capture.stop()
    maria.execute("INSERT INTO {db}.items VALUES (2, 'two', 2, 2.00)")  # never published
    maria.purge_binlogs()
    again = PipelineProcess("capture", maria.env, maria.work / "capture-again.log")
    maria.processes["capture-again"] = again
    assert wait_until(lambda: not again.alive(), 60), again.tail()
    assert again.proc.returncode == 3
    assert "no longer has binlog file" in again.tail()
    assert "--reset-position" in again.tail()


def test_table_without_primary_key_is_refused(maria: MariadbScenario) -> None:
    maria.execute("CREATE TABLE {db}.items (id INT, name TEXT)")
    capture = PipelineProcess("capture", maria.env, maria.work / "capture.log")
    maria.processes["capture"] = capture
    assert wait_until(lambda: not capture.alive(), 60), capture.tail()
    assert capture.proc.returncode == 3
    assert "has no primary key" in capture.tail()


def test_resume_by_gtid_publishes_what_was_written_while_stopped(
        maria: MariadbScenario) -> None:
    maria.env["CDC_MYSQL__RESUME_BY"] = "gtid"
    maria.execute(ITEMS_DDL)
    capture = maria.start("capture")
    maria.execute("INSERT INTO {db}.items VALUES (1, 'one', 1, 1.00)")
    assert wait_until(lambda: len(maria.changes()) == 1, 60)
    capture.stop()
    conn = maria.connect()
    try:  # one transaction of many rows while capture is down
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            for i in range(2, 202):
                cur.execute(f"INSERT INTO {maria.db}.items VALUES (%s, 'x', %s, 1.00)", (i, i))
            cur.execute("COMMIT")
    finally:
        conn.close()
    maria.start("capture")
    assert wait_until(lambda: len(maria.changes()) == 201, 60), len(maria.changes())
    ids = [c["after"]["id"] for c in maria.changes()]
    assert ids == list(range(1, 202))  # each once, in order
    gtids = {c["source"]["gtid"] for c in maria.changes()[1:]}
    assert len(gtids) == 1  # the one transaction


def _xa(conn: Any, xid: str, *statements: str) -> None:
    with conn.cursor() as cur:
        cur.execute(f"XA START {xid}")
        for statement in statements:
            cur.execute(statement)
        cur.execute(f"XA END {xid}")
        cur.execute(f"XA PREPARE {xid}")


@pytest.mark.parametrize("resume_by", ["position", "gtid"])
def test_xa_rolled_back_after_prepare_never_reaches_the_sinks(
        maria: MariadbScenario, resume_by: str) -> None:
    """Held from XA PREPARE to its outcome, through a kill -9 while held: the committed one
    arrives, the rolled-back one never does, and nothing written between them is lost."""
    maria.env["CDC_MYSQL__RESUME_BY"] = resume_by
    maria.execute(ITEMS_DDL)
    maria.execute("INSERT INTO {db}.items VALUES (1, 'before', 1, 1.00)")
    capture = maria.start("capture")
    maria.start("worker")
    assert maria.converged(), maria.indexed()
    keep, drop = maria.connect(), maria.connect()
    kept = f"X'ff00',X'{maria.uid}',7"  # a binary id; a branch of this test's own
    try:
        _xa(keep, kept,
            f"UPDATE {maria.db}.items SET name = 'kept' WHERE id = 1",
            f"INSERT INTO {maria.db}.items VALUES (10, 'kept', 10, 1.00)")
        _xa(drop, f"'drop{maria.uid}'",
            f"INSERT INTO {maria.db}.items VALUES (20, 'rolled back', 0, 0)",
            f"UPDATE {maria.db}.items SET qty = 5 WHERE id = 20")
        maria.execute("INSERT INTO {db}.items VALUES (2, 'plain', 2, 2.00)")
        assert wait_until(lambda: "2" in maria.indexed(), 60), maria.indexed()
        with drop.cursor() as cur:
            cur.execute(f"XA ROLLBACK 'drop{maria.uid}'")
        maria.execute("INSERT INTO {db}.items VALUES (3, 'plain', 3, 3.00)")
        assert wait_until(lambda: "3" in maria.indexed(), 60), maria.indexed()
        capture.kill()  # while the first is still held
        maria.start("capture")
        with keep.cursor() as cur:
            cur.execute(f"XA COMMIT {kept}")
    finally:
        for conn, xid in ((keep, kept), (drop, f"'drop{maria.uid}'")):
            with contextlib.suppress(Exception), conn.cursor() as cur:
                cur.execute(f"XA ROLLBACK {xid}")  # none left prepared on failure
            conn.close()
    maria.execute("INSERT INTO {db}.items VALUES (4, 'plain', 4, 4.00)")
    assert maria.converged(), (maria.indexed(), maria.expected())
    assert maria.indexed()["1"]["name"] == "kept"
    keys = {key["id"] for key, value, _ in maria.records() if key is not None}
    assert 20 not in keys and {1, 2, 3, 4, 10} <= keys


def _peak_rss_mb(proc: PipelineProcess) -> float:
    """VmHWM (the peak resident set) of the capture subprocess, in MB."""
    status = Path(f"/proc/{proc.proc.pid}/status").read_text()
    (line,) = [x for x in status.splitlines() if x.startswith("VmHWM:")]
    return int(line.split()[1]) / 1024


def _published(maria: MariadbScenario) -> int:
    """Records in the table's topic, from the partitions' end offsets (no reading)."""
    from confluent_kafka import Consumer, TopicPartition

    from pipeline.kafka.client import client_config
    consumer = Consumer(client_config(maria.settings.kafka, {"group.id": f"n-{maria.uid}"}))
    try:
        meta = consumer.list_topics(maria.topic, timeout=10).topics.get(maria.topic)
        if meta is None or meta.error is not None:
            return 0
        return sum(consumer.get_watermark_offsets(TopicPartition(maria.topic, p), 10)[1]
                   for p in meta.partitions)
    finally:
        consumer.close()


def _one_transaction(maria: MariadbScenario, first: int, last: int) -> None:
    """One INSERT .. SELECT of ids first..last: one transaction (MariaDB's sequence engine)."""
    maria.execute(f"INSERT INTO {{db}}.items SELECT seq, CONCAT('item ', seq), seq, "
                  f"seq + 0.5 FROM {{db}}.seq_{first}_to_{last}")


def test_large_transaction_streams_with_bounded_memory(maria: MariadbScenario) -> None:
    """100k rows in one transaction reach Kafka once each, in order, while capture's
    peak RSS stays bounded: rows events are handed over through a bounded queue as they
    are read, never collected per transaction."""
    maria.execute(ITEMS_DDL)
    capture = maria.start("capture")
    _one_transaction(maria, 1, 10_000)
    assert wait_until(lambda: _published(maria) >= 10_000, 120, 0.5), _published(maria)
    peak_small = _peak_rss_mb(capture)
    _one_transaction(maria, 10_001, 110_000)
    assert wait_until(lambda: _published(maria) >= 110_000, 300, 1), _published(maria)
    peak_large = _peak_rss_mb(capture)
    assert capture.alive(), capture.tail()
    # Ten times the rows: a capture holding the transaction would grow by ~100+ MB here.
    assert peak_large < 250, (peak_small, peak_large)
    assert peak_large - peak_small < 40, (peak_small, peak_large)

    records = maria.records()
    assert len(records) == 110_000  # no duplicates, nothing extra
    values = [v for _, v, _ in records]
    assert all(v is not None and v["op"] == "c" for v in values)
    by_lsn = sorted(values, key=lambda v: v["source"]["lsn"])
    assert [v["after"]["id"] for v in by_lsn] == list(range(1, 110_001))
    assert len({v["source"]["gtid"] for v in by_lsn[10_000:]}) == 1  # one transaction
    for partition in (0, 1, 2):  # each partition in binlog order as published
        lsns = [v["source"]["lsn"] for _, v, p in records if p == partition]
        assert lsns == sorted(lsns)
