"""PostgreSQL -> capture -> Kafka -> Faust worker -> Elasticsearch + Redis, on real servers."""

from __future__ import annotations

import random
import threading
import time

import orjson
import pytest
from confluent_kafka import Producer

from pipeline import stack
from pipeline.deadletter import (
    H_CLASS,
    H_CONNECTOR,
    H_MESSAGE,
    H_OFFSET,
    H_PARTITION,
    H_STAGE,
    H_TIMESTAMP,
    H_TOPIC,
)
from pipeline.harness import wait_until
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration


def _workload(sc: Scenario, rows: int, seed: int, first: int = 1) -> None:
    """Inserts ids first..first+rows-1 (one per transaction), then updates and deletes."""
    rng = random.Random(seed)
    conn = sc.connect()
    table = f"{sc.schema}.items"
    ids = range(first, first + rows)
    for i in ids:
        with conn, conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (%s, %s, %s, %s)",
                        (i, f"item {i}", i, f"{i}.50"))
    for _ in range(20):
        with conn, conn.cursor() as cur:
            for i in rng.sample(ids, 10):
                cur.execute(f"UPDATE {table} SET qty = qty + 1, price = price * 2 WHERE id = %s",
                            (i,))
            cur.execute(f"DELETE FROM {table} WHERE id = %s", (rng.choice(ids),))
    conn.close()


def test_changes_reach_the_index_and_invalidate_the_cache(scenario: Scenario) -> None:
    sc = scenario
    sc.start("capture")
    sc.start("worker")
    sc.execute("INSERT INTO items VALUES (1, 'apple', 3, 1.25), (2, 'pear', 5, 2.50), "
               "(3, 'plum', 7, 0.99)")
    assert sc.converged(90), sc.processes["worker"].tail()
    sc.redis.mset({"item:1": "x", "item:2": "x", "item:3": "x", "item-name:apple": "x",
                   "item-name:green apple": "x", "item-name:plum": "x"})

    sc.execute("UPDATE items SET name = 'green apple', qty = 4 WHERE id = 1")
    sc.execute("DELETE FROM items WHERE id = 2")
    sc.execute("UPDATE items SET id = 30 WHERE id = 3")  # a primary-key change

    assert sc.converged(30)
    assert sc.indexed() == {
        "1": {"id": 1, "name": "green apple", "qty": 4, "price": "1.25"},
        "30": {"id": 30, "name": "plum", "qty": 7, "price": "0.99"},
    }
    # Keys of the touched rows go (both the old and the new name's key); plum's name key
    # is derived from the after image of the moved row, so it goes too.
    assert wait_until(lambda: sc.redis.exists("item:1", "item:2", "item:3") == 0, 10)
    assert sc.redis.exists("item-name:green apple") == 0
    assert sc.redis.exists("item-name:plum") == 0
    # Caught up: every worker reports its consumer lag, and it is zero.
    lags = lambda: sc.gauges("cdc_worker_consumer_lag_records", "worker-")  # noqa: E731
    assert wait_until(lambda: len(lags()) >= 2 and not any(lags()), 15), lags()


def test_unchanged_toast_value_is_never_overwritten(scenario: Scenario) -> None:
    sc = scenario
    big = "".join(f"{random.getrandbits(128):032x}" for _ in range(400))  # ~12 kB, incompressible
    sc.start("capture")
    sc.start("worker")
    sc.execute("INSERT INTO items (id, name, qty, price, note) VALUES (1, 'doc', 1, 1, %s)", big)
    sc.execute("UPDATE items SET qty = 2 WHERE id = 1")  # note arrives as unchanged TOAST
    assert sc.converged(90)

    from pipeline.harness import index_documents

    doc = index_documents(sc.es_url, sc.index)["1"]
    assert doc["qty"] == 2
    assert doc["note"] == big


def test_capture_killed_mid_workload_loses_nothing(scenario: Scenario) -> None:
    sc = scenario
    capture = sc.start("capture")
    sc.start("worker")
    load = threading.Thread(target=_workload, args=(sc, 400, 1))
    load.start()
    time.sleep(1.5)
    capture.kill()  # SIGKILL: no flush, no final confirmation
    time.sleep(0.5)
    sc.start("capture")
    load.join()
    assert sc.converged(120), sc.processes["capture"].tail()
    assert len(sc.expected()) > 300


@pytest.mark.parametrize("dedup", [True, False], ids=["dedup", "versions-only"])
def test_replayed_out_of_order_events_keep_the_newest_state(
    scenario: Scenario, dedup: bool
) -> None:
    sc = scenario
    sc.env["CDC_WORKER__DEDUP__ENABLED"] = str(dedup).lower()
    sc.start("capture")
    sc.start("worker")
    for version in range(1, 6):
        sc.execute("INSERT INTO items VALUES (1, %s, %s, 1) "
                   "ON CONFLICT (id) DO UPDATE SET name = excluded.name, qty = excluded.qty",
                   f"v{version}", version)
    sc.execute("INSERT INTO items VALUES (2, 'gone', 1, 1)")
    sc.execute("DELETE FROM items WHERE id = 2")
    assert sc.converged(90)

    records = [r for r in sc.read_topic(sc.topic) if r.value() is not None]
    assert len(records) >= 7
    seen = ("cdc_worker_records_total", "worker-search")
    before = sc.counter(*seen)
    producer = Producer({"bootstrap.servers": sc.settings.kafka.bootstrap_servers})
    for record in reversed(records):  # oldest last: every replayed event is stale
        producer.produce(sc.topic, record.value(), record.key())
    assert producer.flush(10) == 0

    # The search worker has read every replayed event (each one a duplicate or stale) ...
    assert wait_until(lambda: sc.counter(*seen) >= before + len(records), 30)
    # ... recognised by dedup as already applied (counted when the batch is drained, a
    # moment after it was read) or, without it, refused by Elasticsearch's external
    # versions (the sink wrote them, the index did not change).
    dropped = ("cdc_dedup_dropped_total", "worker-search")
    if dedup:
        wait_until(lambda: sc.counter(*dropped) >= len(records), 30)
    assert sc.counter(*dropped) == (len(records) if dedup else 0)
    assert sc.indexed() == {"1": {"id": 1, "name": "v5", "qty": 5, "price": "1.00"}}
    assert sc.counter("cdc_dead_letters_total") == 0


def test_undecodable_event_goes_to_the_dead_letter_topic(scenario: Scenario) -> None:
    sc = scenario
    sc.start("capture")
    sc.start("worker")
    sc.execute("INSERT INTO items VALUES (1, 'first', 1, 1)")
    assert sc.converged(90)

    producer = Producer({"bootstrap.servers": sc.settings.kafka.bootstrap_servers})
    producer.produce(sc.topic, b"\x00not json{", b'{"id": 99}')
    producer.produce(sc.topic, orjson.dumps({"op": "x", "source": {}}), b'{"id": 98}')
    assert producer.flush(10) == 0
    sc.execute("INSERT INTO items VALUES (2, 'after the poison', 2, 2)")

    assert sc.converged(30)
    # Each sink consumes with its own group, so each dead-letters its copy (as each Kafka
    # Connect connector does), named in the connector header.
    dlq = sc.settings.worker.dead_letter_topic
    assert wait_until(lambda: len(sc.read_topic(dlq)) == 4, 30)
    letters = sc.read_topic(dlq)
    groups = {dict(m.headers())[H_CONNECTOR].decode() for m in letters}
    assert groups == {sc.settings.group_id("search"), sc.settings.group_id("cache")}
    garbage = [m for m in letters if m.value() == b"\x00not json{"]
    assert len(garbage) == 2
    headers = dict(garbage[0].headers())
    assert headers[H_TOPIC] == sc.topic.encode()
    assert headers[H_STAGE] == b"decode"
    assert headers[H_CLASS] == b"pipeline.errors.EventDecodeError"
    assert b"not valid JSON" in headers[H_MESSAGE]
    assert int(headers[H_PARTITION]) in range(3)
    assert int(headers[H_OFFSET]) >= 0
    assert headers[H_TIMESTAMP].startswith(b"20")
    bad_op = [m for m in letters if m.key() == b'{"id": 98}']
    assert all(b"'op' must be one of" in dict(m.headers())[H_MESSAGE] for m in bad_op)


def test_elasticsearch_outage_delays_but_loses_nothing(scenario: Scenario) -> None:
    sc = scenario
    sc.start("capture")
    sc.start("worker")
    sc.execute("INSERT INTO items VALUES (1, 'before the outage', 1, 1)")
    assert sc.converged(90)

    stack.stop_service("elasticsearch")
    try:
        _workload(sc, 100, 2, first=10)
        time.sleep(5)  # the worker keeps retrying while Elasticsearch is down
        assert sc.counter("cdc_sink_retries_total") > 0
    finally:
        stack.start_service("elasticsearch")
    assert sc.converged(120)
    assert sc.counter("cdc_dead_letters_total") == 0
    assert sc.read_topic(sc.settings.worker.dead_letter_topic) == []


def test_sink_down_longer_than_max_poll_interval_pauses_without_a_rebalance(
        scenario: Scenario) -> None:
    """Elasticsearch stays down for three max.poll.interval.ms: the search worker pauses its
    partitions and keeps polling, so its group never rebalances; nothing is dead-lettered
    or lost, and everything is indexed once Elasticsearch is back."""
    sc = scenario
    sc.env["CDC_WORKER__MAX_POLL_INTERVAL_MS"] = "8000"
    sc.start("capture")
    sc.start("worker")
    sc.execute("INSERT INTO items VALUES (1, 'before the outage', 1, 1)")
    assert sc.converged(90)
    time.sleep(3)  # the first assignment's rebalance is in the metrics

    def rebalances() -> float:
        return sc.counter("cdc_worker_rebalances_total", "worker-search")

    def paused() -> float:
        return max(sc.gauges("cdc_worker_paused_partitions", "worker-search"), default=0)

    before = rebalances()
    stack.stop_service("elasticsearch")
    try:
        _workload(sc, 100, 3, first=10)
        assert wait_until(lambda: paused() > 0, 30), "the search worker never paused"
        time.sleep(24)  # three times max.poll.interval.ms, paused all along
        assert paused() > 0
    finally:
        stack.start_service("elasticsearch")
    assert sc.converged(120)
    assert wait_until(lambda: paused() == 0, 30), "the partitions were never resumed"
    assert rebalances() == before, "the worker's group rebalanced during the outage"
    assert sc.counter("cdc_dead_letters_total") == 0
    assert sc.read_topic(sc.settings.worker.dead_letter_topic) == []
