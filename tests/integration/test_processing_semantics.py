"""Deduplication across a worker restart, and schema evolution while the pipeline runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from pipeline.harness import group_stable, index_documents, wait_until
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration


def _wait_ready(sc: Scenario, sinks: tuple[str, ...] = ("search", "cache")) -> None:
    groups = [sc.settings.group_id(s) for s in sinks]
    assert wait_until(lambda: all(group_stable(sc.settings.kafka, g) for g in groups), 60)


def test_duplicate_after_worker_restart_is_dropped(scenario: Scenario) -> None:
    sc = scenario
    sc.start("capture")
    worker = sc.start("worker")
    sc.execute("INSERT INTO items VALUES (1, 'a', 1, 1), (2, 'b', 2, 2), (3, 'c', 3, 3)")
    sc.execute("UPDATE items SET qty = 30 WHERE id = 3")
    assert sc.converged(90)
    indexed = 'cdc_sink_events_total{sink="search"}'
    assert wait_until(lambda: sc.counter(indexed) == 4, 10)
    worker.stop()

    # The same four changes again, as a replay after a crash would deliver them.
    originals = [r for r in sc.read_topic(sc.topic) if r.value() is not None]
    assert len(originals) == 4
    producer = Producer({"bootstrap.servers": sc.settings.kafka.bootstrap_servers})
    for record in originals:
        producer.produce(sc.topic, record.value(), record.key(), partition=record.partition())
    assert producer.flush(10) == 0

    sc.start("worker")  # a new process: the seen-set comes back from its changelog
    _wait_ready(sc)
    sc.execute("INSERT INTO items VALUES (4, 'after restart', 4, 4)")
    assert sc.converged(60)
    assert wait_until(lambda: sc.counter("cdc_dedup_dropped_total") >= 8, 30)  # 4 per sink
    assert wait_until(lambda: sc.counter(indexed) >= 5, 10)
    time.sleep(2 * sc.settings.metrics.interval_s)  # let every snapshot catch up
    assert sc.counter(indexed) == 5  # only the new insert reached Elasticsearch
    assert sc.counter("cdc_dead_letters_total") == 0


UPCASTERS = '''
from pipeline.evolution.upcast import Upcasters

upcasters = Upcasters()


@upcasters.register("{table}", 1)
def split_name(row):
    first, _, last = (row.pop("name") or "").partition(" ")
    row["first_name"], row["last_name"] = first, last
    return row
'''


def _schemas(root: Path, table: str) -> None:
    folder = root / "schemas" / table
    folder.mkdir(parents=True)
    nullable_int = {"name": "qty", "type": ["null", "int"], "default": None}
    versions = {
        1: [{"name": "id", "type": "int"}, {"name": "name", "type": ["null", "string"],
                                           "default": None}, nullable_int],
        2: [{"name": "id", "type": "int"}, {"name": "first_name", "type": "string"},
            {"name": "last_name", "type": "string"}, nullable_int],
    }
    versions[3] = [*versions[2], {"name": "currency", "type": "string", "default": "USD"}]
    for version, fields in versions.items():
        record = {"type": "record", "name": "Value", "namespace": table, "fields": fields}
        (folder / f"v{version}.avsc").write_text(json.dumps(record))
    (root / "schemas" / "ids.yaml").write_text(f"{table}:\n  1: 9001\n  2: 9002\n  3: 9003\n")
    envelope = Path(__file__).resolve().parents[2] / "schemas" / "envelope.avsc"
    (root / "schemas" / "envelope.avsc").write_text(envelope.read_text())
    (root / f"upcasters_{table.replace('.', '_')}.py").write_text(UPCASTERS.format(table=table))


def test_table_evolves_v1_v2_v3_while_the_pipeline_runs(scenario: Scenario) -> None:
    sc = scenario
    table = f"{sc.schema}.people"
    sc.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text, qty int)")
    _schemas(sc.work, table)
    sc.env.update({
        "CDC_POSTGRES__TABLES": f"[{table}]",
        "CDC_EVOLUTION__SCHEMAS_DIR": str(sc.work / "schemas"),
        "CDC_EVOLUTION__UPCASTERS": f"upcasters_{table.replace('.', '_')}",
        "PYTHONPATH": str(sc.work),
    })
    index = sc.settings.elasticsearch.index_for(table)  # type: ignore[union-attr]
    sc.start("capture")
    sc.start("worker")
    _wait_ready(sc)

    sc.execute(f"INSERT INTO {table} VALUES (1, 'Ada Lovelace', 1), (2, 'Alan Turing', 2)")
    # v2: the application now stores first and last names (capture sees a new Relation).
    sc.execute(f"ALTER TABLE {table} RENAME COLUMN name TO first_name")
    sc.execute(f"ALTER TABLE {table} ADD COLUMN last_name text NOT NULL DEFAULT ''")
    sc.execute(f"INSERT INTO {table} (id, qty, first_name, last_name) "
               "VALUES (3, 2, 'Grace', 'Hopper')")
    # v3: a currency column with a value of its own.
    sc.execute(f"ALTER TABLE {table} ADD COLUMN currency text NOT NULL DEFAULT 'EUR'")
    sc.execute(f"INSERT INTO {table} (id, qty, first_name, last_name) "
               "VALUES (4, 4, 'Edsger', 'Dijkstra')")
    sc.execute(f"UPDATE {table} SET qty = 20 WHERE id = 2")

    expected = {
        "1": {"id": 1, "first_name": "Ada", "last_name": "Lovelace", "qty": 1,
              "currency": "USD"},  # a v1 event, upcast in code, then the v3 default
        "2": {"id": 2, "first_name": "Alan Turing", "last_name": "", "qty": 20,
              "currency": "EUR"},  # updated after v3: the row as it is now
        "3": {"id": 3, "first_name": "Grace", "last_name": "Hopper", "qty": 2,
              "currency": "USD"},  # a v2 event: additive step to v3, default filled
        "4": {"id": 4, "first_name": "Edsger", "last_name": "Dijkstra", "qty": 4,
              "currency": "EUR"},
    }
    assert wait_until(lambda: index_documents(sc.es_url, index) == expected, 60), (
        index_documents(sc.es_url, index), sc.processes["worker"].tail()
    )
    assert sc.counter("cdc_dead_letters_total") == 0
