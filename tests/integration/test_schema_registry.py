"""Avro through a real schema registry (Apicurio Registry, Confluent's API), started by the
stack: capture registers and writes, workers resolve ids there; a writer that is not ours
(confluent_kafka's own AvroSerializer) is read too."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from pipeline import stack
from pipeline.capture.publisher import ensure_topics
from pipeline.harness import index_documents, wait_until
from pipeline.kafka.client import client_config
from pipeline.stack.registry import NAME as REGISTRY
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def registry_url(stack_info: object) -> Iterator[str]:
    was_running = stack.status().get(REGISTRY)
    info = stack.up([REGISTRY])
    yield info.schema_registry_url
    # Stopped even with CDC_KEEP_STACK: while it runs, `cdc stack up` exports its URL.
    if not (was_running and was_running.running):
        stack.stop_service(REGISTRY)


def _column(name: str, avro_type: Any) -> dict[str, Any]:
    return {"name": name, "type": ["null", avro_type], "default": None}


def _owned_schemas(folder: Path, table: str) -> Path:
    """A schema folder owning two versions of the scenario's table: v2 adds ``color``."""
    shutil.copy(REPO / "schemas" / "envelope.avsc", folder / "envelope.avsc")
    (folder / "ids.yaml").write_text(f"{table}:\n  1: 901\n  2: 902\n")
    v1 = [{"name": "id", "type": "int"}, _column("name", "string"), _column("qty", "int"),
          _column("price", "string"), _column("note", "string")]
    (folder / table).mkdir()
    for version, fields in ((1, v1), (2, [*v1, _column("color", "string")])):
        (folder / table / f"v{version}.avsc").write_text(json.dumps({
            "type": "record", "name": "Value", "namespace": table, "fields": fields}))
    return folder


def _avro(sc: Scenario, registry_url: str, tmp_path: Path, **env: str) -> None:
    """The scenario in Avro, its table's two versions owned (``_owned_schemas``), the kafka
    engine; ``env``: more settings."""
    owned = tmp_path / "schemas"
    owned.mkdir()
    sc.env.update({
        "CDC_KAFKA__VALUE_FORMAT": "avro",
        "CDC_KAFKA__SCHEMA_REGISTRY_URL": registry_url,
        "CDC_EVOLUTION__SCHEMAS_DIR": str(_owned_schemas(owned, sc.table_id)),
        "CDC_WORKER__ENGINE": "kafka",
        **env,
    })


def _ids(sc: Scenario, topic: str, want: int) -> dict[int, list[int]]:
    """Per row id (the JSON key), the schema id of each of its non-null values, in order
    (a row's records share a partition), once ``want`` values are read (a loaded machine
    may need more than one read); asserts the wire format."""
    ids: dict[int, list[int]] = {}

    def read() -> bool:
        ids.clear()
        for m in sc.read_topic(topic):
            value = m.value()
            if value is None:
                continue
            assert value[0] == 0, value[:8]  # magic byte: Confluent's Avro wire format
            ids.setdefault(orjson.loads(m.key())["id"], []).append(
                int.from_bytes(value[1:5], "big"))
        return sum(len(v) for v in ids.values()) >= want


    wait_until(read, 60, 1)
    return ids


def test_capture_registers_avro_and_the_worker_evolves_across_an_added_column(
    scenario: Scenario, registry_url: str, tmp_path: Path
) -> None:
    sc = scenario
    _avro(sc, registry_url, tmp_path)
    sc.start("capture")
    sc.start("worker")
    sc.execute("INSERT INTO items VALUES (1, 'apple', 3, 1.25, 'n'), (2, 'pear', 1, 0.5, NULL)")
    sc.execute("UPDATE items SET qty = 4 WHERE id = 1")
    assert sc.converged(120), sc.processes["worker"].tail()

    sc.execute("ALTER TABLE items ADD COLUMN color text")
    sc.execute("INSERT INTO items VALUES (3, 'plum', 9, 2.00, NULL, 'purple')")
    sc.execute("UPDATE items SET color = 'green', qty = 5 WHERE id = 2")
    sc.execute("DELETE FROM items WHERE id = 1")
    assert sc.converged(90), sc.processes["worker"].tail()
    docs = index_documents(sc.es_url, sc.index)
    assert docs["3"]["color"] == "purple" and docs["2"]["color"] == "green"

    # The registry holds both versions under the topic's subject, and the topic carries
    # first the id of v1, then (after the ALTER) the id of v2.
    client = SchemaRegistryClient({"url": registry_url})
    subject = f"{sc.topic}-value"
    versions = client.get_versions(subject)
    assert len(versions) == 2, versions  # our v1 and v2: nothing had to be inferred
    v1_id = client.get_version(subject, versions[0]).schema_id
    v2_id = client.get_version(subject, versions[1]).schema_id
    v2_row = json.loads(client.get_schema(v2_id).schema_str)["fields"][0]["type"][1]
    assert v2_row["fields"][-1] == _column("color", "string")  # typed as v2.avsc says
    # row 1: insert and update in v1 (or one snapshot read, when capture's snapshot began
    # after they committed), delete in v2; row 2: insert (v1), update (v2); row 3: v2
    ids = _ids(sc, sc.topic, 5)
    assert ids[1][-1] == v2_id and set(ids[1][:-1]) == {v1_id}, ids
    assert ids[2] == [v1_id, v2_id] and ids[3] == [v2_id], ids
    assert sc.counter("cdc_dead_letters_total") == 0


def _foreign_envelope_schema(namespace: str) -> dict[str, Any]:
    """An envelope as another team's producer might write it: its own names and
    namespaces, ``id`` as a long, no ``transaction`` field."""
    row = {"type": "record", "name": "Row", "namespace": namespace, "fields": [
        {"name": "id", "type": "long"},
        {"name": "name", "type": ["null", "string"], "default": None},
        {"name": "qty", "type": ["null", "int"], "default": None},
        {"name": "price", "type": ["null", "string"], "default": None},
    ]}
    source = {"type": "record", "name": "Source", "namespace": namespace, "fields": [
        {"name": n, "type": t} for n, t in (
            ("version", "string"), ("connector", "string"), ("name", "string"),
            ("ts_ms", "long"), ("db", "string"), ("schema", "string"), ("table", "string"),
            ("sequence", ["null", "string"]), ("lsn", ["null", "long"]))]}
    return {"type": "record", "name": "ChangeRecord", "namespace": namespace, "fields": [
        {"name": "before", "type": ["null", row], "default": None},
        {"name": "after", "type": ["null", f"{namespace}.Row"], "default": None},
        {"name": "source", "type": source},
        {"name": "op", "type": "string"},
        {"name": "ts_ms", "type": ["null", "long"], "default": None},
    ]}


def test_the_worker_reads_a_topic_written_by_a_foreign_avro_producer(
    scenario: Scenario, registry_url: str
) -> None:
    sc = scenario
    sc.env.update({"CDC_KAFKA__SCHEMA_REGISTRY_URL": registry_url,
                   "CDC_WORKER__ENGINE": "kafka"})
    ensure_topics(sc.settings.kafka, [sc.topic])
    client = SchemaRegistryClient({"url": registry_url})
    serialize = AvroSerializer(client, json.dumps(_foreign_envelope_schema(f"other.n{sc.uid}")))
    producer = Producer(client_config(sc.settings.kafka))
    rows = [(7, "fig", 2, "3.10"), (8, "kiwi", None, None), (7, "fig", 6, "3.10")]
    for lsn, (row_id, name, qty, price) in enumerate(rows, start=100):
        after = {"id": row_id, "name": name, "qty": qty, "price": price}
        value = {
            "before": None, "after": after, "op": "c" if lsn < 102 else "u",
            "ts_ms": 1_700_000_000_000 + lsn,
            "source": {"version": "3.2.0.Final", "connector": "postgresql", "name": "other",
                       "ts_ms": 1_700_000_000_000 + lsn, "db": "cdc", "schema": sc.schema,
                       "table": "items", "sequence": json.dumps([None, str(lsn)]),
                       "lsn": lsn},
        }
        producer.produce(sc.topic, key=orjson.dumps({"id": row_id}),
                         value=serialize(value, SerializationContext(sc.topic,
                                                                     MessageField.VALUE)))
    assert producer.flush(30) == 0

    sc.start("worker")
    want = {"7": {"id": 7, "name": "fig", "qty": 6, "price": "3.10"},
            "8": {"id": 8, "name": "kiwi", "qty": None, "price": None}}
    assert wait_until(lambda: sc.indexed() == want, 90, 0.5), (
        sc.indexed(), sc.processes["worker"].tail())
    ids = {i for row in _ids(sc, sc.topic, 3).values() for i in row}
    assert len(ids) == 1  # the registry's id for the foreign schema
    schema = client.get_schema(ids.pop())
    assert json.loads(schema.schema_str)["name"] == "ChangeRecord"
    assert sc.counter("cdc_dead_letters_total") == 0
    assert httpx.get(f"{registry_url}/subjects/{sc.topic}-value/versions").json() == [1]


def test_a_parallel_initial_snapshot_writes_avro_as_capture_does(
    scenario: Scenario, registry_url: str, tmp_path: Path
) -> None:
    """Snapshot reader processes make their publisher as capture does: with
    ``kafka.value_format: avro`` they wrote JSON before, which no Avro consumer can read."""
    sc = scenario
    _avro(sc, registry_url, tmp_path, CDC_POSTGRES__SNAPSHOT_READERS="2",
          CDC_POSTGRES__SNAPSHOT_CHUNK_SIZE="7")
    sc.execute("INSERT INTO items SELECT i, 'item ' || i, i, i / 4.0, NULL "
                "FROM generate_series(1, 60) AS i")
    sc.start("capture")
    sc.start("worker")
    assert sc.converged(120), sc.processes["worker"].tail()
    ids = _ids(sc, sc.topic, 60)  # asserts the wire format of every value
    assert sorted(ids) == list(range(1, 61))
    client = SchemaRegistryClient({"url": registry_url})
    (version,) = client.get_versions(f"{sc.topic}-value")  # the owned v1: nothing inferred
    v1_id = client.get_version(f"{sc.topic}-value", version).schema_id
    assert {i for per_row in ids.values() for i in per_row} == {v1_id}
    assert sc.counter("cdc_dead_letters_total") == 0
