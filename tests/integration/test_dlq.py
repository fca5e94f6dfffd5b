"""Dead-letter round trip on real servers: poison events reach the dead-letter topic, `cdc dlq`
lists and shows them, the cause is fixed, and `cdc dlq replay` indexes each exactly once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid

import httpx
import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from pipeline.harness import wait_until
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration

REJECTED = "pipeline.errors.SinkRejectedError"
DECODE = "pipeline.errors.EventDecodeError"


def cdc(sc: Scenario, *args: str, stdin: str | None = None) -> str:
    """Runs `cdc <args>` as a user would, with the scenario's settings; returns stdout."""
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], input=stdin,
                          env={**os.environ, **sc.env}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"cdc {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout


def table_rows(output: str) -> list[list[str]]:
    """The rows under the ──── rule of a rendered table (cells split on 2+ spaces)."""
    lines = output.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("─"))
    rows = []
    for line in lines[rule + 1:]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def change(sc: Scenario, row_id: int, note: object, lsn: int,
           name: str = "it") -> tuple[bytes, bytes]:
    """A create event for the scenario's table, as capture would write it after a column
    ``note`` was added (``name``: the source's, which the workers' seen-set keys rows by)."""
    source = {"connector": "postgresql", "name": name, "db": "cdc", "schema": sc.schema,
              "table": "items", "ts_ms": int(time.time() * 1000), "lsn": lsn}
    value = {"before": None, "after": {"id": row_id, "name": f"item {row_id}", "qty": 1,
                                       "price": "1.00", "note": note},
             "source": source, "op": "c", "ts_ms": int(time.time() * 1000)}
    return orjson.dumps({"id": row_id}), orjson.dumps(value)


def document(sc: Scenario, doc_id: str) -> dict[str, object]:
    response = httpx.get(f"{sc.es_url}/{sc.index}/_doc/{doc_id}", timeout=10)
    return dict(response.json()) if response.status_code == 200 else {}


def raw_topic_end(sc: Scenario) -> int:
    consumer = Consumer({"bootstrap.servers": sc.settings.kafka.bootstrap_servers,
                         "group.id": f"ends-{uuid.uuid4().hex[:6]}"})
    try:
        meta = consumer.list_topics(sc.topic, timeout=10).topics[sc.topic]
        return sum(consumer.get_watermark_offsets(TopicPartition(sc.topic, p), timeout=10)[1]
                   for p in meta.partitions)
    finally:
        consumer.close()


def limit_fields(sc: Scenario, limit: int) -> None:
    """What an operator may set on an index: how many fields its mapping may have. A row
    that brings a column beyond it is refused, whatever its values (the sink widens a field
    whose type changed, so a type change is no longer a refusal)."""
    httpx.put(f"{sc.es_url}/{sc.index}/_settings",
              json={"index.mapping.total_fields.limit": limit}, timeout=30).raise_for_status()


def test_dead_letters_are_listed_shown_and_replayed_exactly_once(scenario: Scenario) -> None:
    sc = scenario
    dlq = sc.settings.worker.dead_letter_topic
    sc.start("capture")
    sc.start("worker")
    sc.execute("INSERT INTO items VALUES (1, 'apple', 3, 1.25)")
    assert sc.converged(90), sc.processes["worker"].tail()
    limit_fields(sc, 1)  # no room for another column

    poison = {"2": (2, "not-a-number", 9_000_000_002), "3": (3, "a dozen", 9_000_000_003)}
    producer = Producer({"bootstrap.servers": sc.settings.kafka.bootstrap_servers})
    for row_id, note, lsn in poison.values():
        key, value = change(sc, row_id, note, lsn)
        producer.produce(sc.topic, value, key)
    producer.produce(sc.topic, b"\x00not json{", b'{"id": 99}')
    assert producer.flush(10) == 0

    def stages() -> list[bytes]:
        return [dict(m.headers())["__connect.errors.stage"] for m in sc.read_topic(dlq)]

    assert wait_until(lambda: stages().count(b"sink:search") == 2 and b"decode" in stages(), 60)

    # -- list: one row per (original topic, stage, error class)
    listed = cdc(sc, "dlq", "list")
    assert listed.splitlines()[0].startswith(f"{dlq}: ")
    rows = {(r[0], r[1], r[2]): r for r in table_rows(listed)}
    assert rows[(sc.topic, "sink:search", REJECTED)][3] == "2"
    assert int(rows[(sc.topic, "decode", DECODE)][3]) >= 1  # once per sink that read it
    assert re.fullmatch(r"20\d\d-\d\d-\d\d \d\d:\d\d:\d\dZ", rows[(sc.topic, "decode", DECODE)][4])

    # -- show: headers as text, key, value pretty-printed or escaped
    shown = cdc(sc, "dlq", "show", "--stage", "sink:search")
    assert shown.count(f"── {dlq}[") == 2
    assert "Limit of total fields [1] has been exceeded" in shown, shown
    assert '"note": "not-a-number"' in shown and '"note": "a dozen"' in shown
    undecodable = cdc(sc, "dlq", "show", "--stage", "decode", "--limit", "1")
    assert 'text "\\x00not json{"' in undecodable and '{"id": 99}' in undecodable
    as_json = [json.loads(line) for line in cdc(sc, "dlq", "show", "--json").splitlines()]
    by_stage = {d["headers"]["__connect.errors.stage"]: d for d in as_json}
    assert by_stage["decode"]["value"] is None and by_stage["decode"]["value_base64"]
    assert sorted(d["value"]["after"]["note"] for d in as_json
                  if d["headers"]["__connect.errors.stage"] == "sink:search") == [
        "a dozen", "not-a-number"]

    # -- fix the cause, then replay what the search index refused
    limit_fields(sc, 1000)
    before = raw_topic_end(sc)
    assert cdc(sc, "dlq", "replay", "--stage", "sink:search", "--dry-run").splitlines()[0] == (
        "would replay 2 dead letters")
    assert raw_topic_end(sc) == before  # a dry run produces nothing
    replayed = cdc(sc, "dlq", "replay", "--stage", "sink:search")
    assert replayed.splitlines()[0] == "replayed 2 dead letters"
    assert table_rows(replayed) == [[f"raw:{sc.topic}", "2"]]
    assert raw_topic_end(sc) == before + 2
    assert wait_until(lambda: all(document(sc, i) for i in poison), 60), sc.processes[
        "worker"].tail()
    applied = {}
    for doc_id, (_, note, lsn) in poison.items():
        doc = document(sc, doc_id)
        assert doc["_version"] == lsn  # the event's own version, indexed once
        assert doc["_source"]["note"] == note  # type: ignore[index]
        applied[doc_id] = doc["_seq_no"]
    assert document(sc, "1")["_source"]["qty"] == 3  # type: ignore[index]

    # -- a second replay finds nothing new, to the raw topic or straight to the sink
    again = cdc(sc, "dlq", "replay", "--stage", "sink:search")
    assert again.splitlines()[0] == "replayed 0 dead letters"
    assert "2 already replayed" in again
    assert raw_topic_end(sc) == before + 2
    direct = cdc(sc, "dlq", "replay", "--to", "sink:search", "--stage", "sink:search")
    assert direct.splitlines()[0] == "replayed 0 dead letters"  # the worker applied them
    assert "skipped: 2 applied already" in direct
    for doc_id, (_, _, lsn) in poison.items():
        doc = document(sc, doc_id)
        assert (doc["_version"], doc["_seq_no"]) == (lsn, applied[doc_id])  # nothing reapplied
    # the undecodable record is still waiting: once, however many sinks dead-lettered it
    assert cdc(sc, "dlq", "replay", "--dry-run").splitlines()[0] == "would replay 1 dead letter"
    time.sleep(2)  # any letter the replay caused would have arrived by now
    assert table_rows(cdc(sc, "dlq", "list")) == table_rows(listed)

    # -- purge: everything read now goes, after confirmation
    purged = cdc(sc, "dlq", "purge", "--all", stdin="y\n")
    assert "delete these records" in purged
    assert cdc(sc, "dlq", "list").strip() == f"{dlq}: no dead letters"


def test_a_letter_replayed_to_a_sink_after_its_row_was_deleted_stays_out(
        scenario: Scenario) -> None:
    """--to sink:search wrote letters past the worker's seen-set, relying on the index's
    external versions alone: once Elasticsearch forgot a delete's version (index.gc_deletes,
    60 s), a letter older than the delete brought the deleted row back."""
    sc = scenario
    sc.start("capture")
    sc.start("worker")
    sc.execute("INSERT INTO items VALUES (1, 'apple', 3, 1.25), (2, 'pear', 1, 2.00)")
    assert sc.converged(90), sc.processes["worker"].tail()
    limit_fields(sc, 1)
    created = {orjson.loads(m.key())["id"]: orjson.loads(m.value())["source"]
               for m in sc.read_topic(sc.topic)}
    producer = Producer({"bootstrap.servers": sc.settings.kafka.bootstrap_servers})
    for row_id in (1, 2):  # changes right after the inserts, with a column the index
        source = created[row_id]  # has no room for
        key, value = change(sc, row_id, "late", source["lsn"] + 1, source["name"])
        producer.produce(sc.topic, value, key)
    assert producer.flush(10) == 0
    dlq = sc.settings.worker.dead_letter_topic
    assert wait_until(lambda: len(sc.read_topic(dlq)) == 2, 60)
    limit_fields(sc, 1000)
    sc.execute("DELETE FROM items WHERE id = 1")  # newer than row 1's letter
    assert wait_until(lambda: not document(sc, "1"), 60)
    # what Elasticsearch does once index.gc_deletes passed: the delete's version is gone
    httpx.put(f"{sc.es_url}/{sc.index}/_settings", json={"index.gc_deletes": "0s"},
              timeout=30).raise_for_status()
    time.sleep(1)
    replayed = cdc(sc, "dlq", "replay", "--to", "sink:search", "--stage", "sink:search")
    assert replayed.splitlines()[0] == "replayed 1 dead letter", replayed
    assert "skipped: 1 applied already, or older" in replayed
    assert not document(sc, "1")  # the deleted row stays deleted
    assert document(sc, "2")["_source"]["note"] == "late"  # type: ignore[index]
