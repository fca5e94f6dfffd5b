"""Issue 9: no record can stop a worker, no record can reach beyond its table.

Hostile records go straight into the scenario's raw topic, each on the partition of a row
that capture then changes (the good event behind it), on both worker engines. Every good
event and every row captured meanwhile must be indexed; every poison record is dead-lettered
by both sinks' workers with a reason, or applied as the README documents; no worker restarts;
no other index is created or emptied."""

from __future__ import annotations

import json
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import Producer

from pipeline.deadletter import H_MESSAGE, H_OFFSET, H_PARTITION, H_STAGE
from pipeline.harness import wait_until
from tests.integration.poisons import SCHEMAS, Poison, poisons
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration



def current_lsn(sc: Scenario) -> int:
    conn = sc.connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT (pg_current_wal_lsn() - '0/0')::bigint")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("engine", ["faust", "kafka"])
def test_no_record_stops_a_worker_or_reaches_beyond_its_table(
    scenario: Scenario, engine: str
) -> None:
    sc = scenario
    sc.env["CDC_WORKER__ENGINE"] = engine
    sc.env["CDC_EVOLUTION__SCHEMAS_DIR"] = str(SCHEMAS)  # Avro is read, unknown ids refused
    victim = f"it{sc.uid}victim"
    httpx.put(f"{sc.es_url}/{victim}/_doc/1?refresh=true", json={"keep": "me"},
              timeout=30).raise_for_status()
    sc.start("capture")
    worker = sc.start("worker")
    rows = len(poisons(sc, 0, 0, victim))
    assert rows >= 60
    values = ", ".join(f"({i}, 'item {i}', {i}, {i}.25)" for i in range(1, rows + 1))
    sc.execute(f"INSERT INTO items VALUES {values}")
    assert sc.converged(120), worker.tail()
    partition_of = {json.loads(m.key())["id"]: m.partition() for m in sc.read_topic(sc.topic)}

    producer = Producer({"bootstrap.servers": sc.settings.kafka.bootstrap_servers})
    placed: dict[tuple[int, int], Poison] = {}

    def delivered(poison: Poison) -> Any:
        def report(err: Any, msg: Any) -> None:
            assert err is None, err
            placed[(msg.partition(), msg.offset())] = poison
        return report

    for row in range(1, rows + 1):
        # Strictly below the good event's LSN: pg_current_wal_lsn() can be exactly where
        # the next change is written, and an equal version makes Elasticsearch refuse the
        # good event (409) as no newer than the poison.
        poison = poisons(sc, row, current_lsn(sc) - 1, victim)[row - 1]
        key = orjson.dumps({"id": row}) if poison.key == "row" else poison.key
        assert not isinstance(key, str)
        producer.produce(sc.topic, poison.value, key, partition=partition_of[row],
                         on_delivery=delivered(poison))
        assert producer.flush(10) == 0
        sc.execute("UPDATE items SET qty = qty + 1 WHERE id = %s", row)  # the good event
        if row % 10 == 0:  # and rows captured meanwhile
            sc.execute("INSERT INTO items VALUES (%s, 'meanwhile', 1, 1)", 10_000 + row)
    assert len(placed) == rows

    assert sc.converged(180), sc.drift() + worker.tail()
    expected = {at: p for at, p in placed.items() if p.reason is not None}
    dlq = sc.settings.worker.dead_letter_topic

    def letters() -> dict[tuple[int, int], list[dict[str, bytes]]]:
        found: dict[tuple[int, int], list[dict[str, bytes]]] = {}
        for m in sc.read_topic(dlq):
            headers = dict(m.headers())
            at = (int(headers[H_PARTITION]), int(headers[H_OFFSET]))
            found.setdefault(at, []).append(headers)
        return found

    assert wait_until(lambda: sum(len(v) for v in letters().values()) >= 2 * len(expected),
                      120), worker.tail()
    found = letters()
    for at, poison in expected.items():
        got = found.get(at, [])
        assert len(got) == 2, (poison.name, got)  # one per sink's worker
        for headers in got:
            assert headers[H_STAGE] == b"decode", (poison.name, headers)
            assert poison.reason.encode() in headers[H_MESSAGE], (poison.name, headers)
    for at in found.keys() - expected.keys():  # applied ones may be refused by a sink only
        poison = placed[at]
        assert all(h[H_STAGE].startswith(b"sink:") and h[H_MESSAGE] for h in found[at]), (
            poison.name, found[at])

    log = worker.tail(100_000)
    assert "; restarting" not in log and "stopped with a" not in log, log[-3000:]
    assert "decoding a record raised" not in log  # every poison was foreseen by decode
    assert worker.alive()
    # nothing beyond the table: the victim keeps its document, no other index appeared
    assert httpx.get(f"{sc.es_url}/{victim}/_count", timeout=10).json()["count"] == 1
    listed = httpx.get(f"{sc.es_url}/_cat/indices/*{sc.uid}*",
                       params={"h": "index", "format": "json"}, timeout=10).json()
    assert all(i["index"] in (victim, f"it{sc.uid}.cdc-truncates")
               or i["index"].startswith(f"{sc.index}_v") for i in listed), listed


def test_a_dead_letter_over_kafkas_size_limit_is_written_without_its_value(
        scenario: Scenario) -> None:
    """A record near its topic's limit plus the dead-letter headers was over it: the letter
    was refused, retried for ever, and every partition of both sinks stopped behind it."""
    import asyncio

    from pipeline.capture.publisher import ensure_topics
    from pipeline.deadletter import H_VALUE_DROPPED, DeadLetterTopic, RawRecord

    sc = scenario
    topic = sc.settings.worker.dead_letter_topic
    ensure_topics(sc.settings.kafka, [topic], config={"max.message.bytes": "20000"})
    letters = DeadLetterTopic(sc.settings.kafka, topic, "it")
    broker_refuses = RawRecord(sc.topic, 1, 7, b'{"id": 1}', b"x" * 50_000)
    producer_refuses = RawRecord(sc.topic, 2, 8, b'{"id": 2}', b"y" * (16 * 1024 * 1024))
    fits = RawRecord(sc.topic, 0, 9, b'{"id": 3}', b"small")
    asyncio.run(letters.send([(r, "sink:search", ValueError("refused"))
                              for r in (broker_refuses, producer_refuses, fits)]))
    written = {m.key(): m for m in sc.read_topic(topic)}
    assert len(written) == 3
    assert written[b'{"id": 3}'].value() == b"small"
    for key, size, where in ((b'{"id": 1}', 50_000, "[1] at offset 7"),
                             (b'{"id": 2}', 16 * 1024 * 1024, "[2] at offset 8")):
        headers = dict(written[key].headers())
        assert written[key].value() is None
        assert headers[H_VALUE_DROPPED].decode().startswith(f"{size} bytes")
        assert where in headers[H_VALUE_DROPPED].decode()
        assert headers[H_STAGE] == b"sink:search"
