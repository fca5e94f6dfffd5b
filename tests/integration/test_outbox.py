"""The transactional outbox against real PostgreSQL and Kafka: the relay (`cdc capture` with
capture.source outbox, one or two at once) and the routing by the logical source."""

from __future__ import annotations

import json
import os
import random
import threading
import uuid
from collections import defaultdict
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)
from psycopg2 import sql

from pipeline import outbox
from pipeline.cli import main as cli
from pipeline.harness import PipelineProcess, wait_until
from pipeline.kafka.client import client_config
from pipeline.metrics import read_snapshots
from pipeline.outbox.table import install
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration


def _setup(sc: Scenario, **settings: str) -> dict[str, str]:
    """The outbox table in the test's schema, and the env of a relay reading it."""
    conn = sc.connect()
    install(conn, f"{sc.schema}.outbox")
    conn.close()
    env = {**sc.env,
           "CDC_CAPTURE__SOURCE": "outbox",
           "CDC_OUTBOX__TABLE": f"{sc.schema}.outbox",
           "CDC_OUTBOX__TOPIC_TEMPLATE": f"it{sc.uid}.outbox.event.{{aggregatetype}}",
           "CDC_OUTBOX__POLL_INTERVAL_S": "0.05"}
    env.update({f"CDC_OUTBOX__{k.upper()}": v for k, v in settings.items()})
    return env


def _topic(sc: Scenario, aggregate_type: str) -> str:
    return f"it{sc.uid}.outbox.event.{aggregate_type}"


def _relay(sc: Scenario, name: str, env: dict[str, str]) -> PipelineProcess:
    metrics_dir = sc.work / f"metrics-{name}"
    proc = PipelineProcess("capture", {**env, "CDC_METRICS__SNAPSHOT_DIR": str(metrics_dir)},
                           sc.work / f"{name}.log")
    sc.processes[name] = proc
    return proc


def _records(sc: Scenario, topic: str, want: int, timeout: float = 60) -> list[Any]:
    found: list[Any] = []

    def enough() -> bool:
        nonlocal found
        found = sc.read_topic(topic)
        return len(found) >= want

    wait_until(enough, timeout, 0.3)
    return found


def _header(msg: Any, name: str) -> str | None:
    values = [v for k, v in (msg.headers() or []) if k == name]
    return values[-1].decode() if values else None


def _rows(sc: Scenario, where: str = "true") -> list[tuple[Any, ...]]:
    conn = sc.connect()
    with conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT id::text, status, retry_count, last_error FROM {}.outbox "
                            "WHERE " + where + " ORDER BY seq").format(
                                sql.Identifier(sc.schema)))
        rows = cur.fetchall()
    conn.close()
    return rows


def _publish(sc: Scenario, events: list[tuple[str, str, str, Any]],
             commit: bool = True) -> list[str]:
    conn = sc.connect()
    ids = [str(outbox.publish(conn, atype, aid, etype, payload, table=f"{sc.schema}.outbox"))
           for atype, aid, etype, payload in events]
    conn.commit() if commit else conn.rollback()
    conn.close()
    return ids


def _cdc(sc: Scenario, env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


@pytest.mark.parametrize("delete", [False, True])
def test_relay_publishes_committed_events_only_with_id_key_and_type(
    scenario: Scenario, delete: bool,
) -> None:
    sc = scenario
    env = _setup(sc, delete_after_publish=str(delete).lower())
    rolled_back = _publish(sc, [("order", "7", "OrderCreated", {"id": 7, "lost": True})],
                           commit=False)
    ids = _publish(sc, [("order", "1", "OrderCreated", {"id": 1, "total": 9.5}),
                        ("order", "1", "OrderPaid", {"id": 1}),
                        ("customer", "c-9", "CustomerMoved", {"city": "Lyon"})])
    _relay(sc, "relay", env)
    orders = _records(sc, _topic(sc, "order"), 2)
    customers = _records(sc, _topic(sc, "customer"), 1)
    assert [_header(m, "id") for m in orders] == ids[:2]
    assert rolled_back[0] not in [_header(m, "id") for m in orders]
    assert [m.key() for m in orders] == [b"1", b"1"]
    assert [json.loads(m.value()) for m in orders] == [{"id": 1, "total": 9.5}, {"id": 1}]
    assert [_header(m, "type") for m in orders] == ["OrderCreated", "OrderPaid"]
    assert customers[0].key() == b"c-9" and _header(customers[0], "id") == ids[2]
    done = (lambda: _rows(sc) == []) if delete else \
        (lambda: {r[1] for r in _rows(sc)} == {"SENT"})
    assert wait_until(done, 20), _rows(sc)


def test_two_relays_in_parallel_keep_each_aggregates_order(scenario: Scenario) -> None:
    sc = scenario
    env = _setup(sc, batch_size="7")
    aggregates, per_aggregate = 40, 25
    _relay(sc, "relay-a", env)
    _relay(sc, "relay-b", env)

    def writer(owned: list[int], seed: int) -> None:
        rng = random.Random(seed)
        next_n = dict.fromkeys(owned, 0)
        conn = sc.connect()
        while next_n:
            # one transaction: the next event of a few of this writer's aggregates
            for agg in rng.sample(sorted(next_n), min(len(next_n), rng.randint(1, 5))):
                outbox.publish(conn, "item", f"a{agg}", "Changed", {"n": next_n[agg]},
                               table=f"{sc.schema}.outbox")
                next_n[agg] += 1
                if next_n[agg] == per_aggregate:
                    del next_n[agg]
            conn.commit()
        conn.close()

    threads = [threading.Thread(target=writer, args=(list(range(i, aggregates, 2)), i))
               for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = aggregates * per_aggregate
    records = _records(sc, _topic(sc, "item"), total, 120)
    by_key: dict[bytes, list[Any]] = defaultdict(list)
    for msg in sorted(records, key=lambda m: (m.partition(), m.offset())):
        by_key[msg.key()].append(msg)
    assert len(by_key) == aggregates
    for key, msgs in by_key.items():
        seen: set[str | None] = set()
        order = []
        for msg in msgs:  # a consumer dropping repeats by the id header
            event_id = _header(msg, "id")
            if event_id not in seen:
                seen.add(event_id)
                order.append(json.loads(msg.value())["n"])
        assert order == list(range(per_aggregate)), (key, order)
    assert wait_until(lambda: {r[1] for r in _rows(sc)} == {"SENT"}, 30)

    def sent_by_relay() -> list[float]:
        return [sum(v for snap in read_snapshots(sc.work / f"metrics-{relay}").values()
                    for k, v in snap.get("counters", {}).items()
                    if k.startswith("cdc_outbox_events_total") and 'outcome="sent"' in k)
                for relay in ("relay-a", "relay-b")]

    # metrics snapshots are written every second
    assert wait_until(lambda: sum(sent_by_relay()) >= total, 10), sent_by_relay()
    assert all(n > 0 for n in sent_by_relay()), f"both relays published: {sent_by_relay()}"


def test_relay_killed_between_ack_and_mark_sends_again_with_the_same_ids(
    scenario: Scenario,
) -> None:
    sc = scenario
    env = _setup(sc)
    ids = _publish(sc, [("order", str(i % 2), "OrderCreated", {"i": i}) for i in range(5)])
    # SHARE mode lets the relay claim (FOR UPDATE) and publish, but its UPDATE to SENT waits
    blocker = sc.connect()
    with blocker.cursor() as cur:
        cur.execute(sql.SQL("LOCK TABLE {}.outbox IN SHARE MODE").format(
            sql.Identifier(sc.schema)))
    relay = _relay(sc, "relay", env)
    first = _records(sc, _topic(sc, "order"), 5)
    assert sorted(_header(m, "id") or "" for m in first) == sorted(ids)

    def marking_waits() -> bool:
        conn = sc.connect()
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE 'UPDATE%%outbox%%SENT%%'")
            waiting = cur.fetchone()[0]
        conn.close()
        return bool(waiting)

    assert wait_until(marking_waits, 20), relay.tail()
    relay.kill()  # kill -9: acknowledged by Kafka, never marked
    blocker.rollback()
    blocker.close()
    assert {r[1] for r in _rows(sc)} == {"PENDING"}
    _relay(sc, "relay-again", env)
    assert wait_until(lambda: {r[1] for r in _rows(sc)} == {"SENT"}, 30)
    records = _records(sc, _topic(sc, "order"), 10)
    counts: dict[str | None, int] = defaultdict(int)
    for msg in records:
        counts[_header(msg, "id")] += 1
    assert counts == dict.fromkeys(ids, 2)  # every event twice, under its own id


def test_refused_publish_fails_after_max_attempts_and_holds_back_its_aggregate(
    scenario: Scenario,
) -> None:
    sc = scenario
    env = _setup(sc, max_attempts="3", retry_delay_s="0.2")
    big_topic = _topic(sc, "big")
    admin = AdminClient(client_config(sc.settings.kafka))
    for future in admin.create_topics([NewTopic(big_topic, 1, 1, config={
            "max.message.bytes": "2000"})]).values():
        future.result(30)
    too_large = {"blob": os.urandom(10_000).hex()}  # beyond the topic's limit, compressed
    big_ids = _publish(sc, [("big", "b1", "Uploaded", too_large),
                            ("big", "b1", "Tagged", {"tag": "x"})])
    ok_ids = _publish(sc, [("big", "b2", "Tagged", {"tag": "y"}),
                           ("fine", "f1", "Happened", {"ok": True})])
    bad_ids = _publish(sc, [("bad type!", "z", "Odd", {}), ("bad type!", "z", "Odder", {})])
    _relay(sc, "relay", env)

    def status(event_id: str) -> tuple[Any, ...]:
        return _rows(sc, f"id = '{event_id}'")[0]

    assert wait_until(lambda: status(big_ids[0])[1] == "FAILED", 60), _rows(sc)
    _, _, attempts, error = status(big_ids[0])
    assert attempts == 3 and "MSG_SIZE_TOO_LARGE" in error
    # bad input fails at once, with the reason; the aggregate's next event waits behind it
    assert status(bad_ids[0])[1:3] == ("FAILED", 1)
    assert "not a valid Kafka topic name" in status(bad_ids[0])[3]
    assert status(bad_ids[1])[1] == "PENDING"
    assert status(big_ids[1])[1] == "PENDING"  # held back behind the FAILED event
    assert wait_until(lambda: status(ok_ids[1])[1] == "SENT", 20)
    assert wait_until(lambda: status(ok_ids[0])[1] == "SENT", 20), _rows(sc)
    b1 = [m for m in sc.read_topic(big_topic) if m.key() == b"b1"]
    assert b1 == []  # nothing of b1 went out of order

    listed = _cdc(sc, env, "outbox", "failed")
    assert big_ids[0] in listed.output and "holds back 1 later event" in listed.output
    assert "MSG_SIZE_TOO_LARGE" in listed.output and bad_ids[0] in listed.output

    # the operator raises the topic's limit and retries: b1's events arrive in order
    resource = ConfigResource("topic", big_topic, incremental_configs=[ConfigEntry(
        "max.message.bytes", "100000", incremental_operation=AlterConfigOpType.SET)])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)
    retried = _cdc(sc, env, "outbox", "retry", big_ids[0])
    assert "1 FAILED event(s)" in retried.output, retried.output
    assert wait_until(lambda: status(big_ids[1])[1] == "SENT", 60), _rows(sc)
    b1 = [m for m in sc.read_topic(big_topic) if m.key() == b"b1"]
    assert [_header(m, "id") for m in b1] == big_ids


def test_relay_marks_a_payload_that_is_not_json_failed(scenario: Scenario) -> None:
    sc = scenario
    env = _setup(sc)
    conn = sc.connect()
    with conn, conn.cursor() as cur:
        t = sql.Identifier(sc.schema, "outbox")
        cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN payload TYPE text").format(t))
        bad, good = str(uuid.uuid4()), str(uuid.uuid4())
        cur.execute(sql.SQL("INSERT INTO {} (id, aggregatetype, aggregateid, type, payload) "
                            "VALUES (%s, 'doc', '1', 'Saved', %s), (%s, 'doc', '2', 'Saved', %s)"
                            ).format(t), (bad, "{oops", good, '{"ok": 1}'))
    conn.close()
    _relay(sc, "relay", env)
    assert wait_until(lambda: _rows(sc, f"id = '{good}'")[0][1] == "SENT", 30)
    assert wait_until(lambda: _rows(sc, f"id = '{bad}'")[0][1] == "FAILED", 10)
    assert "payload is not valid JSON" in _rows(sc, f"id = '{bad}'")[0][3]


def test_logical_source_routes_outbox_rows_and_messages(scenario: Scenario) -> None:
    sc = scenario
    conn = sc.connect()
    install(conn, f"{sc.schema}.outbox")
    conn.close()
    prefix = f"outbox_{sc.uid}"
    sc.env.update({"CDC_POSTGRES__SNAPSHOT_MODE": "never",
                   "CDC_OUTBOX__TABLE": f"{sc.schema}.outbox",
                   "CDC_OUTBOX__MESSAGE_PREFIX": prefix,
                   "CDC_OUTBOX__TOPIC_TEMPLATE": f"it{sc.uid}.outbox.event.{{aggregatetype}}"})
    capture = sc.start("capture")
    # A slot shows active while its creation still waits for running transactions (of other
    # tests), before its consistent point: what commits then is never decoded (the outbox
    # table is not snapshotted). Streaming has started only after that point.
    assert wait_until(lambda: "streaming slot" in capture.tail(), 60), capture.tail()
    table = f"{sc.schema}.outbox"
    conn = sc.connect()
    rolled_row = outbox.publish(conn, "order", "1", "Lost", {}, table=table)
    rolled_msg = outbox.emit(conn, "order", "1", "Lost", {}, prefix=prefix)
    conn.rollback()
    with conn.cursor() as cur:  # the business change and its events commit together
        cur.execute(sql.SQL("INSERT INTO {} VALUES (1, 'apple', 3, 1.25)").format(
            sql.Identifier(sc.schema, "items")))
    row_id = outbox.publish(conn, "order", "1", "OrderCreated", {"id": 1},
                            {"traceparent": "00-ab"}, table=table)
    msg_id = outbox.emit(conn, "order", "1", "OrderPaid", {"id": 1, "paid": True,
                                                           "cents": 10**30 + 1},
                         prefix=prefix)  # a number no double holds: published as written
    conn.commit()
    # Debezium's advice: delete right after inserting; the insert is still in the WAL
    deleted_id = outbox.publish(conn, "order", "2", "OrderCreated", {"id": 2}, table=table)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(
            sql.Identifier(sc.schema, "outbox")), (str(deleted_id),))
    bad_id = outbox.publish(conn, "bad type!", "3", "Odd", {}, table=table)
    conn.commit()
    conn.close()

    records = _records(sc, _topic(sc, "order"), 3)
    assert {str(rolled_row), str(rolled_msg)}.isdisjoint(_header(m, "id") for m in records)
    orders = [m for m in records if m.key() == b"1"]  # one key, one partition: in order
    assert [_header(m, "id") for m in orders] == [str(row_id), str(msg_id)]
    assert [json.loads(m.value()) for m in orders] == [
        {"id": 1}, {"id": 1, "paid": True, "cents": 10**30 + 1}]
    assert [_header(m, "type") for m in orders] == ["OrderCreated", "OrderPaid"]
    (deleted,) = [m for m in records if m.key() == b"2"]
    assert _header(deleted, "id") == str(deleted_id) and json.loads(deleted.value()) == {"id": 2}
    assert _header(orders[0], "traceparent") == "00-ab"
    assert len(_records(sc, sc.topic, 1)) == 1  # the listed table still goes to its raw topic
    letters = _records(sc, sc.settings.worker.dead_letter_topic, 1)
    assert len(letters) == 1 and letters[0].key() == b"3"
    assert _header(letters[0], "__connect.errors.stage") == "outbox"
    reason = _header(letters[0], "__connect.errors.exception.message") or ""
    assert str(bad_id) in reason and "not a valid Kafka topic name" in reason
    topics = sc.read_topic_names()
    assert sc.settings.kafka.raw_topic(table) not in topics  # no raw topic for the outbox
    message_topic = f"{sc.settings.kafka.topic_prefix}.message"
    assert all(json.loads(m.value())["message"]["prefix"] != prefix
               for m in sc.read_topic(message_topic))


def test_relay_publishes_payload_numbers_exactly(scenario: Scenario) -> None:
    """Parsed to doubles and written again, numbers a double cannot hold were rounded (a
    30-digit id became 1.2345678901234568e+29) and 1e400, which jsonb accepts, failed its
    event. The payload now goes out as the database prints it."""
    sc = scenario
    env = _setup(sc)
    conn = sc.connect()
    event_id = outbox.publish(conn, "order", "1", "Priced", {}, table=f"{sc.schema}.outbox")
    with conn.cursor() as cur:
        cur.execute(sql.SQL("UPDATE {}.outbox SET payload = %s::jsonb WHERE id = %s "
                            "RETURNING payload::text").format(sql.Identifier(sc.schema)),
                    ('{"amount": 12345678901234567.89, "id": 123456789012345678901234567890, '
                     '"big": 1e400}', str(event_id)))
        (stored,) = cur.fetchone()
    conn.commit()
    conn.close()
    _relay(sc, "relay", env)
    (msg,) = _records(sc, _topic(sc, "order"), 1)
    assert msg.value() == stored.encode()
    assert "12345678901234567.89" in stored and "123456789012345678901234567890" in stored
    assert _rows(sc)[0][1] != "FAILED"
