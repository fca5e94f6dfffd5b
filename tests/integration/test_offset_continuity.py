"""Offset continuity against a real broker: the holes a transactional producer leaves in a
log are the log's own (read past them, no re-read), while a record is still never lost."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Producer

from pipeline.capture.publisher import ensure_topics
from pipeline.config import load_settings
from pipeline.harness import wait_until
from pipeline.kafka.offsets import committed_offsets, log_offsets
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration


def _transactional(bootstrap: str) -> Producer:
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": uuid.uuid4().hex})
    producer.init_transactions(30)
    return producer


def test_log_offsets_show_the_holes_of_transaction_markers(scenario: Scenario) -> None:
    bootstrap = scenario.settings.kafka.bootstrap_servers
    topic = f"holes-{scenario.uid}"
    ensure_topics(scenario.settings.kafka, [topic])
    producer = _transactional(bootstrap)
    for size in (3, 2):
        producer.begin_transaction()
        for _ in range(size):
            producer.produce(topic, b"v", b"k", partition=0)
        producer.commit_transaction(30)
    # offsets 0..2, a marker at 3, 4..5, a marker at 6
    assert log_offsets(scenario.settings.kafka, (topic, 0), 0, 6) == [0, 1, 2, 4, 5]
    assert log_offsets(scenario.settings.kafka, (topic, 0), 3, 3) == []
    assert log_offsets(scenario.settings.kafka, (topic, 0), 5, 100) == [5]
    assert committed_offsets(scenario.settings.kafka, f"fresh-{scenario.uid}", [(topic, 0)]) == {
        (topic, 0): None}
    assert committed_offsets(scenario.settings.kafka, f"fresh-{scenario.uid}", [(topic, 0)],
                             earliest=True) == {(topic, 0): 0}


def test_faust_worker_reads_a_transactional_raw_topic_without_rereads(
        scenario: Scenario) -> None:
    """Debezium with ``exactly.once.source.support`` writes raw topics in transactions: a
    marker after each. The worker must take those holes as the log's own."""
    sc = scenario
    sc.start("capture")
    for i in range(1, 25):
        sc.execute("INSERT INTO items VALUES (%s, %s, %s, 1)", i, f"n{i}", i)
    sc.execute("UPDATE items SET qty = qty + 100 WHERE id % 3 = 0")
    originals = wait_until(lambda: len(sc.read_topic(sc.topic)) >= 32, 60)
    assert originals
    records = [r for r in sc.read_topic(sc.topic) if r.value() is not None]

    # The same changes, copied in transactions of four to a topic only the worker reads.
    sc.env["CDC_KAFKA__TOPIC_PREFIX"] = f"tx{sc.uid}"
    worker_settings = load_settings(None, sc.env)
    (copy,) = worker_settings.raw_topics()
    ensure_topics(worker_settings.kafka, [copy])
    producer = _transactional(sc.settings.kafka.bootstrap_servers)
    for start in range(0, len(records), 4):
        producer.begin_transaction()
        for record in records[start:start + 4]:
            producer.produce(copy, record.value(), record.key(), partition=record.partition())
        producer.commit_transaction(30)

    sc.start("worker")
    assert sc.converged(90), sc.processes["worker"].tail()
    search = "worker-search"
    assert wait_until(lambda: sc.counter("cdc_worker_log_gaps_total", search) >= 1, 20)
    assert sc.counter("cdc_worker_rereads_total") == 0
    assert sc.counter("cdc_worker_acks_blocked_total") == 0
    assert sc.counter("cdc_dead_letters_total") == 0
