"""The initial snapshot: rows that exist before capture starts reach the sinks, consistent
with the stream, resumable after a crash."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import orjson
import pytest

from pipeline import stack
from pipeline.config import load_settings
from pipeline.harness import PipelineProcess, wait_until
from pipeline.sources.postgres.slot import ReplicationSlot
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration


def _records(sc: Scenario) -> list[dict]:
    return [orjson.loads(m.value()) for m in sc.read_topic(sc.topic) if m.value() is not None]


class _Watermarks:
    """Records in a topic, the scenario's raw topic by default (high watermarks, one
    consumer: cheap to ask)."""

    def __init__(self, sc: Scenario, topic: str | None = None) -> None:
        from confluent_kafka import Consumer

        self.topic = topic or sc.topic
        self.consumer = Consumer({"bootstrap.servers": sc.settings.kafka.bootstrap_servers,
                                  "group.id": "watermarks"})

    def __call__(self) -> int:
        from confluent_kafka import KafkaException, TopicPartition

        try:
            meta = self.consumer.list_topics(self.topic, timeout=5).topics.get(self.topic)
            if meta is None or meta.error is not None:
                return 0
            return sum(self.consumer.get_watermark_offsets(
                TopicPartition(self.topic, p), timeout=5, cached=False)[1]
                for p in meta.partitions)
        except KafkaException:
            return 0


def _fill(sc: Scenario, rows: int) -> None:
    sc.execute("INSERT INTO items SELECT g, 'existing ' || g, g, g * 1.5 "
               "FROM generate_series(1, %s) g", rows)


def _slot_exists(sc: Scenario, name: str) -> bool:
    conn = sc.connect()
    with conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (name,))
        found = cur.fetchone() is not None
    conn.close()
    return found


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (a parallel snapshot's readers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize(("engine", "readers"), [("faust", 1), ("kafka", 1), ("kafka", 3)])
def test_existing_rows_arrive_and_the_stream_continues_exactly(
    scenario: Scenario, engine: str, readers: int
) -> None:
    sc = scenario
    _fill(sc, 5000)
    sc.env["CDC_WORKER__ENGINE"] = engine
    sc.env["CDC_POSTGRES__SNAPSHOT_READERS"] = str(readers)
    sc.env["CDC_POSTGRES__SNAPSHOT_CHUNK_SIZE"] = "300"
    stop = threading.Event()

    def writer() -> None:  # concurrent changes while the snapshot is read
        i = 0
        conn = sc.connect()
        while not stop.is_set() and i < 200:
            with conn, conn.cursor() as cur:
                cur.execute(f"UPDATE {sc.table_id} SET qty = qty + 1000 WHERE id = %s",
                            (1 + (i * 37) % 5000,))
                cur.execute(f"DELETE FROM {sc.table_id} WHERE id = %s", (4999 - i,))
                cur.execute(f"INSERT INTO {sc.table_id} VALUES (%s, 'new', 1, 1)",
                            (10_000 + i,))
            i += 1
        conn.close()

    sc.start("capture")
    thread = threading.Thread(target=writer)
    thread.start()
    sc.start("worker")
    thread.join(120)
    stop.set()
    assert sc.converged(180), sc.processes["worker"].tail()
    records = _records(sc)
    reads = [r for r in records if r["op"] == "r"]
    assert len(reads) == 5000
    markers = [r["source"]["snapshot"] for r in reads]
    assert markers.count("first") == 1 and markers.count("last") == 1
    assert {r["source"]["lsn"] for r in reads} == {reads[0]["source"]["lsn"]}
    streamed = [r for r in records if r["op"] != "r"]
    assert streamed and all(r["source"]["snapshot"] == "false" for r in streamed)


@pytest.mark.parametrize(("readers", "resume"), [(1, "incremental"),
                                                 (2, "before_streaming")])
def test_a_snapshot_killed_part_way_resumes_without_reading_done_chunks_again(
    scenario: Scenario, readers: int, resume: str
) -> None:
    sc = scenario
    rows = 200_000
    _fill(sc, rows)
    sc.env["CDC_POSTGRES__SNAPSHOT_CHUNK_SIZE"] = "300"
    sc.env["CDC_POSTGRES__SNAPSHOT_READERS"] = str(readers)
    sc.env["CDC_POSTGRES__SNAPSHOT_RESUME"] = resume
    sc.env["CDC_WORKER__ENGINE"] = "kafka"  # the faster engine: 200k rows to index
    published = _Watermarks(sc)
    saved = _Watermarks(sc, sc.settings.kafka.offsets_topic)
    before = saved()
    # Not sc.start: it waits for the slot to stream, which is after the snapshot.
    capture = sc.processes["capture-killed"] = PipelineProcess(
        "capture", sc.env, sc.work / "capture-killed.log")
    # killed as soon as chunk confirmations reached the offsets topic (see below)
    assert wait_until(lambda: published() >= 2_000 and saved() >= before + 3, 120, 0.01), \
        capture.tail()
    readers_pids = _children(capture.proc.pid)
    assert len(readers_pids) >= (readers if readers > 1 else 0), readers_pids
    os.kill(capture.proc.pid, signal.SIGKILL)  # the capture alone, as the OOM killer would
    capture.proc.wait(10)
    # Readers see their parent gone and stop: nothing keeps publishing behind its back.
    assert wait_until(lambda: not any(_running(p) for p in readers_pids), 30), readers_pids
    capture.kill()
    published.consumer.close()
    saved.consumer.close()
    first_run = len(_records(sc))
    assert first_run < rows, "the snapshot finished before the kill; use more rows"
    sc.execute("UPDATE items SET name = 'changed after the crash' WHERE id IN (1, 199999)")
    sc.execute("DELETE FROM items WHERE id = 199998")
    sc.start("capture")
    sc.start("worker")
    assert sc.converged(360), sc.processes["worker"].tail()
    reads = [r for r in _records(sc) if r["op"] == "r"]
    log = sc.processes["capture"].tail(200)
    if resume == "before_streaming":
        assert rows <= len(reads) < rows + first_run  # done chunks were not read again
        assert "resuming after a restart" in log
    else:
        # streaming started at once; the rest came as backfill chunks (`incremental`),
        # without keys the stream changed meanwhile (1, 199999) or deleted (199998)
        assert len(reads) < rows + first_run  # done chunks were not read again
        assert "the rest read as an incremental backfill" in log
        rest = {r["after"]["id"] for r in reads if r["source"]["snapshot"] == "incremental"}
        assert rest and 199998 not in rest
        initial = {r["after"]["id"] for r in reads if r["source"]["snapshot"] != "incremental"}
        assert initial | rest | {1, 199998, 199999} >= set(range(1, rows + 1))


def test_snapshot_modes_never_and_initial_only(scenario: Scenario) -> None:
    sc = scenario
    _fill(sc, 50)
    sc.env["CDC_POSTGRES__SNAPSHOT_MODE"] = "never"
    sc.start("capture")
    sc.execute("INSERT INTO items VALUES (100, 'streamed', 1, 1)")
    assert wait_until(lambda: len(_records(sc)) >= 1, 60)
    assert [r["op"] for r in _records(sc)] == ["c"]
    sc.processes["capture"].stop()

    def capture_until_it_exits(tag: str) -> None:
        proc = sc.processes[tag] = PipelineProcess("capture", sc.env, sc.work / f"{tag}.log")
        assert wait_until(lambda: not proc.alive(), 90), proc.tail()
        assert proc.proc.returncode == 0, proc.tail()

    only, kept = f"slot_{sc.uid}_only", f"slot_{sc.uid}_kept"
    sc.env["CDC_POSTGRES__SNAPSHOT_MODE"] = "initial_only"
    try:
        # Debezium's initial_only leaves no slot: ours drops the one it snapshotted from
        sc.env["CDC_POSTGRES__SLOT"] = only
        capture_until_it_exits("capture-only")
        assert sum(1 for r in _records(sc) if r["op"] == "r") == 51
        assert not _slot_exists(sc, only)
        # again: the snapshot is complete, nothing is read twice, no slot is made
        capture_until_it_exits("capture-only-again")
        assert sum(1 for r in _records(sc) if r["op"] == "r") == 51
        assert not _slot_exists(sc, only)
        # kept on request, for a later capture to stream on from the snapshot point
        sc.env.update({"CDC_POSTGRES__SLOT": kept,
                       "CDC_POSTGRES__INITIAL_ONLY_KEEP_SLOT": "true"})
        capture_until_it_exits("capture-kept")
        assert sum(1 for r in _records(sc) if r["op"] == "r") == 102
        assert _slot_exists(sc, kept)
        # a slot whose snapshot another process completed is left alone: it may be one a
        # streaming capture uses, and initial_only was set by mistake
        sc.env["CDC_POSTGRES__INITIAL_ONLY_KEEP_SLOT"] = "false"
        capture_until_it_exits("capture-kept-again")
        assert _slot_exists(sc, kept)
        assert "still exists and holds WAL" in sc.processes["capture-kept-again"].tail()
    finally:  # the scenario drops only its own slot; these would pin WAL for good
        for name in (only, kept):
            sc.env["CDC_POSTGRES__SLOT"] = name
            ReplicationSlot(load_settings(None, sc.env).postgres).drop_slot()


def test_an_initial_only_snapshot_killed_part_way_reads_the_rest_then_drops_its_slot(
    scenario: Scenario,
) -> None:
    """No stream follows ``initial_only``, so a rerun after kill -9 reads the rest itself
    (never as a backfill that would wait for a stream), from the key it reached, and then
    exits and drops its slot as an uninterrupted run does."""
    sc = scenario
    rows = 200_000
    _fill(sc, rows)
    only = f"slot_{sc.uid}_only"
    sc.env.update({"CDC_POSTGRES__SNAPSHOT_MODE": "initial_only", "CDC_POSTGRES__SLOT": only,
                   "CDC_POSTGRES__SNAPSHOT_CHUNK_SIZE": "300",
                   "CDC_POSTGRES__SNAPSHOT_RESUME": "incremental"})  # ignored: no stream
    published = _Watermarks(sc)
    saved = _Watermarks(sc, sc.settings.kafka.offsets_topic)
    before = saved()
    try:
        capture = sc.processes["capture-killed"] = PipelineProcess(
            "capture", sc.env, sc.work / "capture-killed.log")
        # killed as soon as chunk confirmations reached the offsets topic (the first save
        # is the empty progress): a fixed wait let a fast machine finish the whole table
        assert wait_until(lambda: published() >= 2_000 and saved() >= before + 3, 120, 0.01), \
            capture.tail()
        capture.kill()  # kill -9
        published.consumer.close()
        saved.consumer.close()
        first_run = len(_records(sc))
        assert first_run < rows, "the snapshot finished before the kill; use more rows"
        assert _slot_exists(sc, only)  # the snapshot is not done: its slot stays meanwhile
        # changed after the crash, in keys the first run had not reached (one reader reads
        # in key order): the rerun reads them as they are now
        sc.execute("DELETE FROM items WHERE id = 199998")
        sc.execute("UPDATE items SET name = 'changed after the crash' WHERE id = 199999")
        rerun = sc.processes["capture-rerun"] = PipelineProcess(
            "capture", sc.env, sc.work / "capture-rerun.log")
        assert wait_until(lambda: not rerun.alive(), 300), rerun.tail()
        assert rerun.proc.returncode == 0, rerun.tail()
        records = _records(sc)
        assert {r["op"] for r in records} == {"r"}, "initial_only streamed"
        ids = [r["after"]["id"] for r in records]
        assert set(ids) == set(range(1, rows + 1)) - {199998}
        assert len(ids) < rows + first_run  # done chunks were not read again
        assert not any(r["source"]["snapshot"] == "incremental" for r in records)
        assert [r["after"]["name"] for r in records
                if r["after"]["id"] == 199999] == ["changed after the crash"]
        assert "incremental backfill" not in rerun.tail(200)
        assert not _slot_exists(sc, only)
    finally:  # the scenario drops only its own slot; this one would pin WAL for good
        for proc in sc.processes.values():
            proc.kill()
        ReplicationSlot(load_settings(None, sc.env).postgres).drop_slot()


def test_a_row_held_for_its_marker_is_not_confirmed_before_it_is_published(
    scenario: Scenario,
) -> None:
    """The one-process reader holds each chunk's last row back until the next read tells
    its marker; the progress a chunk confirms must resume before that row, or a crash
    between the two reads loses it."""
    from pipeline.capture.source import Checkpoint
    from pipeline.positions import Lsn
    from pipeline.sources.postgres.snapshot import TableSnapshot
    from pipeline.sources.postgres.source import SESSION
    from pipeline.sources.postgres.unconverted import UnconvertedValues

    sc = scenario
    _fill(sc, 5)
    pg = sc.settings.postgres.model_copy(update={"snapshot_chunk_size": 2})
    kafka = sc.settings.kafka

    def keys(items: list) -> list[int]:
        return [orjson.loads(i[1])["id"] for i in items if isinstance(i, tuple)]

    first = TableSnapshot(pg, kafka, SESSION, Lsn(1), None, None, UnconvertedValues())
    items = first.read() + first.read()  # rows 1-4 read; 4 is held, not handed out
    first.close()
    assert keys(items) == [1, 2, 3]
    (progress,) = [i.position.progress for i in items if isinstance(i, Checkpoint)][-1:]
    # a crash here: the next capture resumes from what was confirmed
    resumed = TableSnapshot(pg, kafka, SESSION, Lsn(1), None, progress, UnconvertedValues())
    rest: list = []
    while not resumed.finished:
        rest += resumed.read()
    assert keys(rest) == [4, 5]


def _snapshot_all(snap: object) -> list:
    items: list = []
    while not snap.finished:  # type: ignore[attr-defined]
        items += snap.read()  # type: ignore[attr-defined]
    return items


def test_every_row_is_handed_out_once_in_key_order_whatever_the_chunk_boundaries(
    scenario: Scenario,
) -> None:
    """The one-process reader's rows, order and markers, when a table ends inside a chunk,
    exactly at a chunk's end (the next read finds nothing), has no row or one."""
    from pipeline.positions import Lsn
    from pipeline.sources.postgres.snapshot import TableSnapshot
    from pipeline.sources.postgres.source import SESSION
    from pipeline.sources.postgres.unconverted import UnconvertedValues

    sc = scenario
    for rows in (12, 13, 0, 1):  # 3 whole chunks of 4; 3 and a row; none; one row
        sc.execute("TRUNCATE items")
        _fill(sc, rows)
        pg = sc.settings.postgres.model_copy(update={"snapshot_chunk_size": 4})
        snap = TableSnapshot(pg, sc.settings.kafka, SESSION, Lsn(1), None, None,
                             UnconvertedValues())
        try:
            items = _snapshot_all(snap)
        finally:
            snap.close()
        reads = [orjson.loads(i[2]) for i in items if isinstance(i, tuple)]
        assert [r["after"]["id"] for r in reads] == list(range(1, rows + 1)), rows
        markers = [r["source"]["snapshot"] for r in reads]
        if rows > 1:
            assert markers[0] == "first" and markers[-1] == "last", markers
            assert set(markers[1:-1]) <= {"true"}, markers
        elif rows == 1:
            assert markers == ["first"]  # Debezium's first wins over last


def test_a_snapshot_whose_session_the_server_ended_stops_with_a_retriable_error(
    scenario: Scenario,
) -> None:
    """The server ends the snapshot's session between two chunks: the next read raises the
    retriable error a lost connection gives (capture restarts from its confirmed progress),
    after handing out only whole rows, each once."""
    from pipeline.errors import RetriableError
    from pipeline.positions import Lsn
    from pipeline.sources.postgres.snapshot import TableSnapshot
    from pipeline.sources.postgres.source import SESSION
    from pipeline.sources.postgres.unconverted import UnconvertedValues

    sc = scenario
    _fill(sc, 40)
    pg = sc.settings.postgres.model_copy(update={"snapshot_chunk_size": 4})
    snap = TableSnapshot(pg, sc.settings.kafka, SESSION, Lsn(1), None, None,
                         UnconvertedValues())
    items: list = []
    backend = snap.conn.get_backend_pid()
    try:
        items += snap.read()
        sc.execute("SELECT pg_terminate_backend(%s)", backend)
        with pytest.raises(RetriableError, match="unreachable"):
            for _ in range(20):
                items += snap.read()
    finally:
        snap.close()
    ids = [orjson.loads(i[1])["id"] for i in items if isinstance(i, tuple)]
    assert ids == list(range(1, len(ids) + 1)) and len(ids) < 40


def test_parallel_readers_split_a_composite_text_key_exactly(scenario: Scenario) -> None:
    """Key ranges planned on a (text, int) key holding empty strings, non-BMP text and
    collation-sensitive values: every row read exactly once, however the ranges fall."""
    sc = scenario
    table = f"{sc.schema}.ckeys"
    sc.execute(f"CREATE TABLE {table} (k text, n int, v text, PRIMARY KEY (k, n))")
    sc.execute(f"INSERT INTO {table} SELECT (ARRAY['', 'a', 'A', 'é', '😀', 'z z', "
               f"'O''Reilly', repeat('x', 3000)])[1 + g % 8], g, 'v' || g "
               f"FROM generate_series(1, 997) g")
    sc.env.update({"CDC_POSTGRES__TABLES": f"[{sc.table_id}, {table}]",
                   "CDC_POSTGRES__SNAPSHOT_MODE": "initial_only",
                   "CDC_POSTGRES__SNAPSHOT_CHUNK_SIZE": "7",
                   "CDC_POSTGRES__SNAPSHOT_READERS": "3"})
    _fill(sc, 50)
    only = sc.processes["capture-only"] = PipelineProcess(
        "capture", sc.env, sc.work / "capture-only.log")
    assert wait_until(lambda: not only.alive(), 120), only.tail()
    assert only.proc.returncode == 0, only.tail()
    reads = [orjson.loads(m.value()) for m in sc.read_topic(sc.settings.kafka.raw_topic(table))
             if m.value() is not None]
    keys = [(r["after"]["k"], r["after"]["n"]) for r in reads]
    assert len(keys) == len(set(keys)) == 997
    assert {r["after"]["k"] for r in reads} == {"", "a", "A", "é", "😀", "z z", "O'Reilly",
                                                 "x" * 3000}
    markers = [r["source"]["snapshot"] for r in _records(sc) + reads]
    assert markers.count("first") == 1


_TYPED = (
    "CREATE TYPE {s}.mood AS ENUM ('ok', 'sad');"
    "CREATE DOMAIN {s}.pos AS numeric(8,3) CHECK (VALUE > 0);"
    "CREATE TABLE {s}.typed (id int PRIMARY KEY, b bool, n numeric(12,2), big numeric,"
    " f float8, r real, ts timestamp, tz timestamptz, d date, t time, iv interval,"
    " raw bytea, j jsonb, js json, u uuid, ints int[], texts text[], m {s}.mood, p {s}.pos,"
    " c char(3), bits bit(1), nums numeric[], i8 int8, txt text)"
)
_TYPED_COLUMNS = ("b, n, big, f, r, ts, tz, d, t, iv, raw, j, js, u, ints, texts, m, p, c, "
                  "bits, nums, i8, txt")
_TYPED_ROWS = (
    "INSERT INTO {t} VALUES (1, true, 12.50, 1e40, 0.1, 1.5, '2024-02-29 13:14:15.123456',"
    " '2024-01-02 03:04:05.5+05:30', '2024-03-01', '01:02:03', '1 day 2 hours', '\\x00ff10',"
    " '{{\"a\": [1, 2.50]}}', '{{\"b\":  1}}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',"
    " '{{1,NULL,3}}', '{{\"a b\",\"c,d\",NULL}}', 'sad', 2.5, 'ab', B'1', '{{1.5,NaN}}',"
    " -9223372036854775808, '\U0001f600 ' || repeat('x', 5000)),"
    " (2, false, -0.01, 'NaN', 'NaN', '-Infinity', 'infinity', '-infinity', '0044-03-15 BC',"
    " '24:00', '-1 mons', '\\x', 'null', '[]', NULL, '{{}}', '{{\"\"}}', 'ok', 0.001, '',"
    " B'0', '{{}}', 9223372036854775807, ''),"
    " (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
    " NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
)


def test_snapshot_rows_carry_the_values_the_stream_publishes(scenario: Scenario) -> None:
    """A table of many types, hostile values and NULLs: each row as the snapshot read it
    (op r) equals the same values inserted again and streamed (op c)."""
    sc = scenario
    table = f"{sc.schema}.typed"
    sc.execute(_TYPED.format(s=sc.schema))
    sc.execute(_TYPED_ROWS.format(t=table))
    sc.env["CDC_POSTGRES__TABLES"] = f"[{table}]"
    sc.settings = load_settings(None, sc.env)
    sc.start("capture")
    topic = sc.settings.kafka.raw_topic(table)
    assert len(sc.values(topic, 3)) >= 3, sc.processes["capture"].tail()
    sc.execute(f"INSERT INTO {table} (id, {_TYPED_COLUMNS}) "
               f"SELECT id + 100, {_TYPED_COLUMNS} FROM {table}")
    events = sc.values(topic, 6)
    assert len(events) == 6, sc.processes["capture"].tail()

    def values(op: str) -> dict[int, dict]:
        return {int(e["after"]["id"]) % 100: {k: v for k, v in e["after"].items() if k != "id"}
                for e in events if e["op"] == op}

    snapshot, streamed = values("r"), values("c")
    assert sorted(snapshot) == sorted(streamed) == [1, 2, 3]
    for row in (1, 2, 3):
        assert snapshot[row] == streamed[row], row
    assert snapshot[1]["b"] is True and snapshot[1]["i8"] == -9223372036854775808
    assert snapshot[1]["ints"] == [1, None, 3]


def test_a_completed_snapshot_is_not_read_again_after_a_restart(scenario: Scenario) -> None:
    """The snapshot's last chunk and the stream's first position were acknowledged
    together and only the stream's was confirmed: the snapshot's completion was never
    recorded, and every restart took it for interrupted and read its tables again."""
    sc = scenario
    _fill(sc, 50)
    capture = sc.start("capture")
    assert wait_until(lambda: sum(r["op"] == "r" for r in _records(sc)) == 50, 60), \
        capture.tail()
    sc.execute("INSERT INTO items VALUES (1000, 'streamed', 1, 1)")
    assert wait_until(lambda: any(r["op"] == "c" for r in _records(sc)), 60), capture.tail()
    time.sleep(2)  # positions are saved at most once a second
    capture.stop()
    restarted = sc.start("capture")
    sc.execute("INSERT INTO items VALUES (1001, 'after the restart', 1, 1)")
    assert wait_until(lambda: sum(r["op"] == "c" for r in _records(sc)) == 2, 60), \
        restarted.tail()
    assert sum(r["op"] == "r" for r in _records(sc)) == 50, restarted.tail()
    assert "interrupted" not in restarted.tail(200), restarted.tail(200)


def test_a_kafka_outage_during_a_parallel_snapshot_delays_it_and_loses_nothing(
    scenario: Scenario,
) -> None:
    """Readers learn Kafka's acknowledgements from flushes, not per record: with Kafka gone
    part-way they wait (no crash loop, no range reported done that Kafka does not hold),
    and once it is back the snapshot completes with every row."""
    sc = scenario
    rows = 60_000
    _fill(sc, rows)
    sc.env["CDC_POSTGRES__SNAPSHOT_CHUNK_SIZE"] = "500"
    sc.env["CDC_POSTGRES__SNAPSHOT_READERS"] = "2"
    sc.env["CDC_WORKER__ENGINE"] = "kafka"
    published = _Watermarks(sc)
    capture = sc.processes["capture"] = PipelineProcess("capture", sc.env,
                                                        sc.work / "capture.log")
    assert wait_until(lambda: published() >= 2_000, 120, 0.01), capture.tail()
    stack.stop_service("kafka")  # takes a moment: the readers go on meanwhile
    try:
        time.sleep(8)  # readers' queues fill and their flushes wait
        assert capture.alive(), capture.tail()
        # No range is done without Kafka: the snapshot cannot have completed meanwhile
        # (had it completed before the outage, this test would need more rows).
        assert "snapshot complete" not in (sc.work / "capture.log").read_text()
    finally:
        stack.start_service("kafka")
    published.consumer.close()
    sc.start("worker")
    assert sc.converged(360), sc.drift()
    assert capture.alive(), capture.tail()
    reads = [r for r in _records(sc) if r["op"] == "r"]
    assert {r["after"]["id"] for r in reads} == set(range(1, rows + 1))
    markers = [r["source"]["snapshot"] for r in reads]
    assert markers.count("last") >= 1
