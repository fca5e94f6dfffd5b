"""What capture publishes, read back from Kafka: real PostgreSQL, real Kafka, `cdc capture`."""

from __future__ import annotations

import time

import orjson
import psycopg2
import pytest

from pipeline import stack
from pipeline.errors import SourceSetupError
from pipeline.harness import PipelineProcess, slot_active, wait_until
from pipeline.sources.postgres.chunks import TableReader
from pipeline.sources.postgres.slot import connect, translate
from pipeline.sources.postgres.source import SESSION
from pipeline.sources.postgres.types import TypeResolver
from pipeline.sources.postgres.unconverted import UnconvertedValues
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration



def _exited(proc: PipelineProcess, timeout: float) -> bool:
    return wait_until(lambda: not proc.alive(), timeout)


def test_a_kafka_outage_while_streaming_replaces_the_stalled_producer_and_loses_nothing(
    scenario: Scenario,
) -> None:
    """Kafka away for longer than ``kafka.producer_stall_s`` with changes queued: capture
    gives its producer up (as it must one librdkafka left stuck after the broker came back),
    retries with backoff while Kafka is down, and once it is back reads again from the last
    confirmed position through a new producer: every change arrives, capture never exits."""
    sc = scenario
    sc.env["CDC_KAFKA__PRODUCER_STALL_S"] = "4"
    sc.env["CDC_WORKER__ENGINE"] = "kafka"
    capture = sc.start("capture")
    sc.execute("INSERT INTO items VALUES (1, 'before the outage', 1, 1)")
    assert len(sc.values(sc.topic, 1)) == 1, capture.tail()
    stack.stop_service("kafka")
    try:
        for i in range(2, 202):
            sc.execute("INSERT INTO items VALUES (%s, 'during the outage', %s, 1)", i, i)
        assert wait_until(lambda: "answered none of the" in capture.tail(400), 60), \
            capture.tail()
        assert capture.alive(), capture.tail()
    finally:
        stack.start_service("kafka")
    sc.execute("INSERT INTO items VALUES (202, 'after the outage', 1, 1)")
    sc.start("worker")
    assert sc.converged(240), sc.drift()
    assert capture.alive(), capture.tail()
    ids = {e["after"]["id"] for e in sc.values(sc.topic, 202) if e["op"] == "c"}
    assert ids == set(range(1, 203))


@pytest.mark.parametrize("engine", ["faust", "kafka"])
def test_restart_resumes_the_last_commit_so_workers_keep_every_change(
    scenario: Scenario, engine: str
) -> None:
    """Item 0: after a restart the first transaction used to carry sequence [null, lsn]; the
    worker ordered it before everything it had seen of the row and dropped it as stale."""
    sc = scenario
    sc.env["CDC_WORKER__ENGINE"] = engine
    sc.start("capture")
    sc.start("worker")
    sc.execute("INSERT INTO items VALUES (1, 'apple', 3, 11.00)")
    assert sc.converged(90), sc.processes["worker"].tail()
    sc.processes["capture"].stop()
    sc.start("capture")
    sc.execute("UPDATE items SET price = 12.00 WHERE id = 1")
    assert sc.converged(60), sc.processes["worker"].tail()
    assert sc.indexed()["1"]["price"] == "12.00"
    events = sc.values(sc.topic, 2)
    sequences = [orjson.loads(e["source"]["sequence"]) for e in events]
    assert all(s[0] is not None for s in sequences), sequences
    # sequence[0] is the previous commit's end LSN: the update's is at or past the insert's
    assert int(sequences[-1][0]) > int(sequences[0][1])
    assert sc.counter("cdc_dedup_stale_total") == 0


def test_only_listed_tables_are_published_even_from_a_wider_publication(
    scenario: Scenario,
) -> None:
    """Item 3: a publication FOR TABLES IN SCHEMA also holds tables the user did not list;
    a listed partitioned table arrives under its own name."""
    sc = scenario
    schema = sc.schema
    sc.execute(f"CREATE TABLE {schema}.secrets (id int PRIMARY KEY, pin text)")
    sc.execute(f"CREATE TABLE {schema}.events (id int, day date, PRIMARY KEY (id, day)) "
               "PARTITION BY RANGE (day)")
    sc.execute(f"CREATE TABLE {schema}.events_2026 PARTITION OF {schema}.events "
               "FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")
    publication = sc.settings.postgres.publication
    sc.execute(f"CREATE PUBLICATION {publication} FOR TABLES IN SCHEMA {schema}")
    sc.env["CDC_POSTGRES__TABLES"] = f"[{sc.table_id}, {schema}.events]"
    sc.start("capture")
    sc.execute(f"INSERT INTO {schema}.secrets VALUES (1, '1234')")
    sc.execute("INSERT INTO items VALUES (1, 'apple', 3, 1.25)")
    sc.execute(f"INSERT INTO {schema}.events VALUES (7, '2026-06-01')")
    events_topic = sc.settings.kafka.raw_topic(f"{schema}.events")
    assert sc.values(events_topic, 1)[0]["source"]["table"] == "events"
    assert len(sc.values(sc.topic, 1)) == 1
    topics = [t for t in sc.read_topic_names() if sc.uid in t]
    assert not [t for t in topics if "secrets" in t], topics
    everything = [v for t in topics if t.startswith(sc.settings.kafka.topic_prefix + ".")
                  for v in sc.values(t, 0, timeout=1)]
    assert not [v for v in everything if "1234" in orjson.dumps(v).decode()]


def test_a_listed_table_without_a_usable_key_is_refused_at_start(scenario: Scenario) -> None:
    sc = scenario
    sc.execute(f"CREATE TABLE {sc.schema}.nokey (id int, v text)")
    sc.env["CDC_POSTGRES__TABLES"] = f"[{sc.schema}.nokey]"
    proc = PipelineProcess("capture", sc.env, sc.work / "capture-nokey.log")
    assert _exited(proc, 60)
    assert "no primary key" in proc.tail()
    assert proc.proc.returncode != 0


def test_an_unconvertible_jsonb_value_does_not_stop_capture(scenario: Scenario) -> None:
    """Item 1: {"huge": 1e400} used to make capture exit for good."""
    sc = scenario
    sc.execute(f"CREATE TABLE {sc.schema}.j (id int PRIMARY KEY, doc jsonb, raw json)")
    sc.env["CDC_POSTGRES__TABLES"] = f"[{sc.schema}.j]"
    sc.start("capture")
    sc.execute(f"INSERT INTO {sc.schema}.j VALUES (1, '{{\"huge\": 1e400}}', "
               "'{\"a\": 1, \"a\": 2, \"n\": 1.000000000000000000001}')")
    sc.execute(f"INSERT INTO {sc.schema}.j VALUES (2, '[]', 'null')")
    events = sc.values(sc.settings.kafka.raw_topic(f"{sc.schema}.j"), 2)
    assert sc.processes["capture"].alive()
    # (rows 1 and 2 are on different partitions: read back in no particular order)
    first = next(e["after"] for e in events if e["after"]["id"] == 1)
    assert first["doc"] == '{"huge": 1' + "0" * 400 + "}"  # jsonb prints numerics in full
    assert first["raw"] == '{"a": 1, "a": 2, "n": 1.000000000000000000001}'


def test_truncate_is_written_to_every_partition(scenario: Scenario) -> None:
    """Item 2 (capture side): each worker sees the truncate in order with its own rows."""
    sc = scenario
    sc.start("capture")
    sc.execute("INSERT INTO items VALUES (1, 'a', 1, 1)")
    sc.execute("TRUNCATE items")
    sc.execute("INSERT INTO items VALUES (2, 'b', 2, 2)")
    sc.values(sc.topic, 2 + sc.settings.kafka.partitions)
    truncates = [m for m in sc.read_topic(sc.topic)
                 if m.value() is not None and orjson.loads(m.value())["op"] == "t"]
    assert sorted(m.partition() for m in truncates) == list(range(sc.settings.kafka.partitions))


def test_logical_messages_and_transaction_metadata(scenario: Scenario) -> None:
    """Items 7 and 8: messages as Debezium publishes them (with prefix filters), and
    BEGIN/END records with per-table counts and each event's transaction block."""
    sc = scenario
    sc.env["CDC_POSTGRES__TRANSACTION_METADATA"] = "true"
    sc.env["CDC_POSTGRES__MESSAGE_PREFIX_EXCLUDE"] = '["^noise"]'
    # Messages are database-wide: any other prefix in a shared database is someone else's.
    sc.env["CDC_POSTGRES__MESSAGE_PREFIX_INCLUDE"] = '["^audit$", "^noise$"]'
    sc.start("capture")
    conn = sc.connect()
    with conn, conn.cursor() as cur:
        cur.execute(f"INSERT INTO {sc.table_id} VALUES (1, 'a', 1, 1), (2, 'b', 2, 2)")
        cur.execute("SELECT pg_logical_emit_message(true, 'audit', 'inside')")
        cur.execute("SELECT pg_logical_emit_message(true, 'noise', 'dropped')")
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_logical_emit_message(false, 'audit', convert_to('outside', "
                    "'UTF8'))")
    conn.close()
    prefix = sc.settings.kafka.topic_prefix
    messages = sc.values(f"{prefix}.message", 2)
    assert sorted(m["message"]["content"] for m in messages) == ["aW5zaWRl", "b3V0c2lkZQ=="]
    assert {m["op"] for m in messages} == {"m"}
    assert {m["message"]["prefix"] for m in messages} == {"audit"}
    txns = sc.values(f"{prefix}.transaction", 2)
    begin, end = txns[0], txns[-1]
    assert (begin["status"], end["status"]) == ("BEGIN", "END")
    assert end["event_count"] == 2
    assert end["data_collections"] == [{"data_collection": sc.table_id, "event_count": 2}]
    rows = sc.values(sc.topic, 2)
    assert sorted(r["transaction"]["total_order"] for r in rows) == [1, 2]
    assert {r["transaction"]["id"] for r in rows} == {end["id"]}


def test_heartbeats_keep_the_slot_moving_and_status_shows_retained_wal(
    scenario: Scenario,
) -> None:
    """Item 9: with only other tables writing, heartbeats and the action query move the
    slot; the WAL the slot retains is a metric and in `cdc status`."""
    sc = scenario
    sc.execute(f"CREATE TABLE {sc.schema}.beat (id int PRIMARY KEY, at timestamptz)")
    sc.execute(f"INSERT INTO {sc.schema}.beat VALUES (1, now())")
    sc.env["CDC_POSTGRES__HEARTBEAT_INTERVAL_S"] = "0.5"
    sc.env["CDC_POSTGRES__HEARTBEAT_ACTION_QUERY"] = (
        f"UPDATE {sc.schema}.beat SET at = now() WHERE id = 1")
    sc.start("capture")
    topic = f"__debezium-heartbeat.{sc.settings.kafka.topic_prefix}"
    beats = sc.values(topic, 3)
    assert all("ts_ms" in b for b in beats)
    assert wait_until(lambda: sc.gauges("cdc_capture_slot_retained_wal_bytes"), 30)
    from pipeline.config import load_settings
    from pipeline.status import render_status

    text = render_status(load_settings(None, sc.env))
    assert "retains" in text and "bytes of WAL" in text


def test_a_lost_slot_stops_capture_with_the_remedy(scenario: Scenario) -> None:
    """Item 9: the confirmed position is kept in Kafka too, so a dropped slot is noticed
    instead of silently re-created at the end of the WAL."""
    sc = scenario
    sc.start("capture")
    sc.execute("INSERT INTO items VALUES (1, 'a', 1, 1)")
    sc.values(sc.topic, 1)
    time.sleep(2.5)  # the position is saved about once a second
    sc.processes["capture"].stop()
    slot = sc.settings.postgres.slot
    conn = psycopg2.connect(sc.dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    conn.close()
    proc = PipelineProcess("capture", sc.env, sc.work / "capture-lost.log")
    assert _exited(proc, 60), proc.tail()
    assert "--reset-position" in proc.tail() and "is gone" in proc.tail()
    reset = PipelineProcess("capture --reset-position", sc.env, sc.work / "capture-reset.log")
    sc.processes["capture-reset"] = reset
    from pipeline.harness import slot_active

    assert wait_until(lambda: slot_active(sc.dsn, slot), 60), reset.tail()


@pytest.mark.parametrize("engine", ["faust", "kafka"])
def test_truncate_never_brings_a_row_back(scenario: Scenario, engine: str) -> None:
    """Item 2: rows of other partitions written after the index was dropped came back
    (insert 1, truncate, insert 2: the index held 1 and 2). The worker starts on the whole
    backlog, so every partition's rows and truncate copy arrive in one go."""
    sc = scenario
    sc.env["CDC_WORKER__ENGINE"] = engine
    sc.start("capture")
    sc.execute("INSERT INTO items SELECT g, 'before', g, 1 FROM generate_series(1, 40) g")
    sc.execute("TRUNCATE items")
    sc.execute("INSERT INTO items SELECT g, 'after', g, 2 FROM generate_series(41, 60) g")
    sc.values(sc.topic, 60)
    sc.start("worker")
    assert sc.converged(90), sc.processes["worker"].tail()
    sc.execute("INSERT INTO items VALUES (1, 'again', 1, 3)")
    sc.execute("TRUNCATE items")
    sc.execute("INSERT INTO items VALUES (2, 'last', 2, 4)")
    assert sc.converged(60), sc.processes["worker"].tail()
    assert set(sc.indexed()) == {"2"}


@pytest.mark.parametrize("readers", [1, 2])  # 2: snapshot chunks read by other processes
@pytest.mark.parametrize(("encoding", "snapshotted", "streamed", "expected"), [
    # A LATIN1 database sent its own bytes, which the decoder (UTF-8) refused on the first
    # 'é', stopping capture on every restart. The sessions now ask for UTF-8.
    ("LATIN1", "'café, read by the snapshot'", "'naïve é ÿ, streamed'",
     ["café, read by the snapshot", "naïve é ÿ, streamed"]),
    # SQL_ASCII stores any bytes and PostgreSQL converts none, but checks them as UTF-8 on
    # their way to a UTF-8 session: the first that was not stopped the stream (walsender)
    # and the snapshot, on every restart. Both now read them as stored and publish each
    # such byte as U+FFFD (as Debezium's decoding); valid UTF-8 next to them is kept.
    ("SQL_ASCII", "E'caf\\xc3\\xa9 \\xe9, read by the snapshot'",
     "E'na\\xefve \\xf0\\x9f\\x98\\x80 \\xff, streamed'",
     ["café \ufffd, read by the snapshot", "na\ufffdve \U0001f600 \ufffd, streamed"]),
])
def test_a_database_in_another_encoding_is_captured_as_utf8(
    scenario: Scenario, encoding: str, snapshotted: str, streamed: str, expected: list[str],
    readers: int,
) -> None:
    sc = scenario
    db = f"enc_{sc.uid}"
    admin = sc.connect()
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db} ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' "
                    "TEMPLATE template0")
    dsn = sc.dsn.replace("dbname=cdc", f"dbname={db}")
    assert dsn != sc.dsn
    other = psycopg2.connect(dsn, options="-c client_encoding=UTF8")
    other.autocommit = True
    env = {**sc.env, "CDC_POSTGRES__DSN": dsn, "CDC_POSTGRES__TABLES": "[public.t, public.k]",
           "CDC_POSTGRES__SNAPSHOT_CHUNK_SIZE": "3", "CDC_POSTGRES__SNAPSHOT_READERS": str(readers)}
    # non-ASCII keys (UTF-8 text), each chunk's last one the next one's bound
    keys = [bytes([0x61 + i % 3, 0x80 + i, 0x7A]).decode("latin-1").encode() for i in range(40)]
    proc = PipelineProcess("capture", env, sc.work / "encoding-capture.log")
    try:
        with other.cursor() as cur:
            cur.execute("CREATE TABLE t (id int PRIMARY KEY, name text)")
            cur.execute(f"INSERT INTO t VALUES (1, {snapshotted})")
            # keys read in chunks of 3: each chunk's last key is the next one's bound
            cur.execute("CREATE TABLE k (k text PRIMARY KEY, id int)")
            for i, key in enumerate(keys):
                cur.execute("INSERT INTO k VALUES (%s, %s)", (key.decode(), i))
        assert wait_until(lambda: slot_active(sc.dsn, sc.settings.postgres.slot), 60), \
            proc.tail()
        with other.cursor() as cur:
            cur.execute(f"INSERT INTO t VALUES (2, {streamed})")
            cur.execute(f"UPDATE t SET name = {streamed} || '' WHERE id = 1")  # the slow path
        events = sc.values(sc.settings.kafka.raw_topic("public.t"), 3)
        assert sorted(e["after"]["name"] for e in events if e["op"] in "rc") == expected
        assert [e["after"]["name"] for e in events if e["op"] == "u"] == expected[1:]
        reads = sc.values(sc.settings.kafka.raw_topic("public.k"), len(keys))
        assert sorted(e["after"]["id"] for e in reads) == list(range(len(keys)))  # once each
        assert {e["after"]["k"] for e in reads} == {k.decode() for k in keys}
        assert proc.alive(), proc.tail()
        if encoding == "SQL_ASCII":
            assert "bytes that are not UTF-8" in proc.tail(), proc.tail()
            # a session reading UTF-8 (polling, triggers, outbox) stops on such a byte, with
            # the remedy (no retries)
            with other.cursor() as cur, pytest.raises(psycopg2.DataError) as refused:
                cur.execute("SELECT name FROM t WHERE id = 2")
            error = translate(refused.value, "polling public.t")
            assert isinstance(error, SourceSetupError), error
            assert "capture.source: logical" in str(error)
            # names hold such bytes too (sent as bytes on a SQL_ASCII session, stored as
            # they are): a column's and a logical message's prefix stopped the stream
            odd = connect(dsn, text_as_stored=True)
            with odd, odd.cursor() as cur:
                cur.execute(b'ALTER TABLE t ADD COLUMN "caf\xe9" int')
                cur.execute(b"INSERT INTO t VALUES (3, 'x', 7)")
                cur.execute(b"SELECT pg_logical_emit_message(true, 'caf\xe9', 'hello')")
            odd.close()
            events = sc.values(sc.settings.kafka.raw_topic("public.t"), 4)
            assert {"id": 3, "name": "x", "caf\ufffd": 7} in [e["after"] for e in events], \
                proc.tail()
            (message,) = sc.values(f"{sc.settings.kafka.topic_prefix}.message", 1)
            assert message["message"]["prefix"] == "caf\ufffd", message
            assert proc.alive(), proc.tail()
            # such a column cannot be named in a snapshot's query: refused with the remedy
            with connect(dsn, text_as_stored=True) as named, \
                    pytest.raises(SourceSetupError, match="RENAME COLUMN"):
                TableReader(named, "public.t", sc.settings.postgres, TypeResolver(),
                            UnconvertedValues())
            # a key holding such a byte is refused: a read starting after it (the next
            # chunk) could not give it back to PostgreSQL exactly, and could skip rows
            with other.cursor() as cur:
                cur.execute("CREATE TABLE badkey (k text PRIMARY KEY, v text)")
                cur.execute("INSERT INTO badkey VALUES ('a', NULL), (E'b\\xff', NULL), "
                            "(E'\\xef\\xbf\\xbd', E'x\\xff')")
            reading = connect(dsn, text_as_stored=True, options=SESSION)
            try:
                reader = TableReader(reading, "public.badkey", sc.settings.postgres,
                                     TypeResolver(), UnconvertedValues())
                assert reader.chunk(None, 1) == [("a", None)]
                with pytest.raises(SourceSetupError, match="key value holds bytes"):
                    reader.chunk(["a"], 3)
                # a key that is U+FFFD as stored is exact: read, next to a replaced value
                assert reader.chunk(["c"], 3) == [("\ufffd", "x\ufffd")]
                assert reader.unconverted.drain() == {"not UTF-8": 1}  # the refused: none
            finally:
                reading.close()
    finally:
        proc.kill()
        # the walsender notices its client gone a moment later: the slot is in use till then
        wait_until(lambda: not slot_active(sc.dsn, sc.settings.postgres.slot), 30)
        with other.cursor() as cur:
            cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                        "WHERE slot_name = %s", (sc.settings.postgres.slot,))
        other.close()
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.close()
