"""The registry client side without a server: ids cached, errors placed in the tree, the
capture's choice of schema, and decoding ids that a registry assigned (ours and foreign).

``RecordingRegistry`` stands in for confluent_kafka's SchemaRegistryClient: it assigns ids as
a registry does (one per distinct schema) and counts calls, so caching is observable. The
server-backed behaviour is in tests/integration/test_schema_registry.py."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from pipeline.capture.avro import ANY_COLUMN, AvroEnvelopeSchemas
from pipeline.errors import PermanentError, RetriableError
from pipeline.events import decode
from pipeline.evolution import EvolutionStage, SchemaSet, UnknownSchemaIdError
from pipeline.evolution.registry import SchemaRegistry, value_subject
from pipeline.evolution.registry_wire import ForeignRecord, RegistryWireFormat

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
SCHEMA_SET = SchemaSet.load(SCHEMAS)
TOPIC = "cdc.public.customers"


class RecordingRegistry:
    """Ids per distinct schema text, from 1; calls counted; failures on demand."""

    def __init__(self) -> None:
        self.texts: dict[str, int] = {}
        self.subjects: dict[str, list[int]] = {}
        self.gets = 0
        self.fail_with: Exception | None = None

    def register_schema(self, subject: str, schema: Schema) -> int:
        schema_id = self.texts.setdefault(schema.schema_str, len(self.texts) + 1)
        versions = self.subjects.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
        return schema_id

    def get_schema(self, schema_id: int) -> Schema:
        self.gets += 1
        if self.fail_with is not None:
            raise self.fail_with
        for text, known in self.texts.items():
            if known == schema_id:
                return Schema(text, "AVRO")
        raise SchemaRegistryError(404, 40403, "Schema not found")


def _registry() -> tuple[SchemaRegistry, RecordingRegistry]:
    fake = RecordingRegistry()
    return SchemaRegistry("http://registry.invalid", fake, sleep=lambda _s: None), fake


def _envelope(after: dict[str, Any] | None, before: dict[str, Any] | None = None,
              op: str = "c") -> dict[str, Any]:
    return {
        "before": before, "after": after, "op": op, "ts_ms": 1, "transaction": None,
        "source": {"version": "1", "connector": "postgresql", "name": "cdc", "ts_ms": 1,
                   "snapshot": "false", "db": "cdc", "sequence": '[null,"40"]',
                   "schema": "public", "table": "customers", "txId": 7, "lsn": 40,
                   "xmin": None, "ts_us": None},
    }


V3_ROW = {"id": 1, "first_name": "Ada", "last_name": "L", "email": None,
          "updated_at": "2026-01-01T00:00:00Z", "currency": "EUR"}


def test_the_subject_is_the_topic_name_strategy() -> None:
    assert value_subject(TOPIC) == "cdc.public.customers-value"


def test_an_id_is_fetched_once_then_served_from_the_cache() -> None:
    registry, fake = _registry()
    schema_id = registry.register("s-value", {"type": "record", "name": "R", "fields": []})
    fresh = SchemaRegistry("http://registry.invalid", fake)
    assert fresh.schema(schema_id) == fresh.schema(schema_id) == {
        "type": "record", "name": "R", "fields": []}
    assert fake.gets == 1


def test_an_id_the_registry_does_not_know_is_bad_data() -> None:
    registry, _ = _registry()
    with pytest.raises(UnknownSchemaIdError, match="schema id 42 is not in the schema registry"):
        registry.schema(42)


@pytest.mark.parametrize(("error", "kind"), [
    (SchemaRegistryError(503, 50301, "unavailable"), RetriableError),
    (SchemaRegistryError(401, 40101, "unauthorized"), PermanentError),
    (ConnectionRefusedError(111, "refused"), RetriableError),
])
def test_registry_failures_are_placed_in_the_error_tree(error: Exception, kind: type) -> None:
    registry, fake = _registry()
    fake.fail_with = error
    with pytest.raises(kind):
        registry.schema(5)


def test_resolve_waits_for_the_registry_to_come_back() -> None:
    registry, fake = _registry()
    schema_id = registry.register("s-value", {"type": "record", "name": "R", "fields": []})
    cold = SchemaRegistry("http://registry.invalid", fake, sleep=lambda _s: None)
    attempts = iter([SchemaRegistryError(503, 50301, "down"), OSError("reset"), None])

    def flaky(schema_id: int) -> Schema:
        fake.fail_with = next(attempts)
        return RecordingRegistry.get_schema(fake, schema_id)

    fake.get_schema = flaky  # type: ignore[method-assign]
    assert cold.resolve(schema_id)["name"] == "R"
    assert fake.gets == 3


def test_resolve_gives_up_after_its_limit() -> None:
    registry, fake = _registry()
    fake.fail_with = SchemaRegistryError(500, 50001, "boom")
    with pytest.raises(RetriableError):
        registry.resolve(9, give_up_after_s=0)


def _read(payload: bytes, schema: dict[str, Any]) -> Any:
    body = io.BytesIO(payload)
    body.seek(5)
    return schemaless_reader(body, parse_schema(schema), None)


def test_capture_writes_rows_of_an_owned_version_with_that_version() -> None:
    registry, fake = _registry()
    schemas = AvroEnvelopeSchemas(SCHEMA_SET, registry)
    payload = schemas.encode(TOPIC, "public.customers", _envelope(V3_ROW))
    assert payload[0] == 0
    schema_id = int.from_bytes(payload[1:5], "big")
    registered = json.loads(next(t for t, i in fake.texts.items() if i == schema_id))
    v3 = SCHEMA_SET.get("public.customers", 3)
    assert registered["fields"][0]["type"][1]["fields"] == v3.row_schema["fields"]
    assert _read(payload, registered)["after"] == V3_ROW
    assert fake.subjects == {f"{TOPIC}-value": [schema_id]}
    # a second event of the same shape registers nothing new
    schemas.encode(TOPIC, "public.customers", _envelope({**V3_ROW, "id": 2}))
    assert len(fake.texts) == 1


def test_an_added_column_registers_an_inferred_version() -> None:
    registry, fake = _registry()
    schemas = AvroEnvelopeSchemas(SCHEMA_SET, registry)
    schemas.encode(TOPIC, "public.customers", _envelope(V3_ROW))
    row = {**V3_ROW, "vip": True}
    payload = schemas.encode(TOPIC, "public.customers", _envelope(row))
    assert len(fake.subjects[f"{TOPIC}-value"]) == 2
    schema = json.loads(next(t for t, i in fake.texts.items()
                             if i == int.from_bytes(payload[1:5], "big")))
    fields = schema["fields"][0]["type"][1]["fields"]
    assert [f["name"] for f in fields] == list(row)
    assert all(f["type"] == ANY_COLUMN for f in fields)
    assert _read(payload, schema)["after"] == row


def test_a_row_that_does_not_fit_its_owned_version_goes_out_inferred() -> None:
    """A key-only before image has nulls where v1 declares non-null strings."""
    registry, _ = _registry()
    schemas = AvroEnvelopeSchemas(SCHEMA_SET, registry)
    before = {"id": 1, "name": None, "email": None, "updated_at": None}
    payload = schemas.encode(TOPIC, "public.customers", _envelope(None, before, op="d"))
    decoded = SchemaRegistry("http://registry.invalid", registry._client).schema(
        int.from_bytes(payload[1:5], "big"))
    assert _read(payload, decoded)["before"] == before


def test_a_truncate_uses_the_schema_its_topic_was_last_written_with() -> None:
    registry, fake = _registry()
    schemas = AvroEnvelopeSchemas(SCHEMA_SET, registry)
    first = schemas.encode(TOPIC, "public.customers", _envelope(V3_ROW))
    truncate = schemas.encode(TOPIC, "public.customers", _envelope(None, op="t"))
    assert truncate[:5] == first[:5] and len(fake.texts) == 1


def _stage(registry: SchemaRegistry) -> EvolutionStage:
    from pipeline.evolution.examples import upcasters

    return EvolutionStage(SCHEMA_SET, upcasters, registry)


def test_the_worker_maps_an_owned_registry_id_to_its_version_and_upcasts() -> None:
    """Written as customers v1 by capture; the worker's registry id is not 101 (ids.yaml),
    yet it knows the schema as v1 and runs the v1 -> v2 upcaster (split_name)."""
    registry, _ = _registry()
    schemas = AvroEnvelopeSchemas(SCHEMA_SET, registry)
    v1_row = {"id": 1, "name": "Ada Lovelace", "email": None,
              "updated_at": "2026-01-01T00:00:00Z"}
    payload = schemas.encode(TOPIC, "public.customers", _envelope(v1_row))
    assert int.from_bytes(payload[1:5], "big") != SCHEMA_SET.schema_id("public.customers", 1)
    event = _stage(registry).decode(b'{"id":1}', payload)
    assert event is not None and event.after is not None
    assert event.after["first_name"] == "Ada" and event.after["last_name"] == "Lovelace"
    assert event.after["currency"] == "USD"


def _foreign(columns: list[dict[str, Any]], row: dict[str, Any], table: str,
             registry: SchemaRegistry) -> bytes:
    """A payload as another producer writes it: its own names, no transaction field."""
    schema = {"type": "record", "name": "Change", "namespace": "other", "fields": [
        {"name": "after", "type": ["null", {"type": "record", "name": "Row",
                                            "fields": columns}]},
        {"name": "before", "type": ["null", "other.Row"]},
        {"name": "op", "type": "string"},
        {"name": "source", "type": {"type": "record", "name": "Src", "fields": [
            *({"name": n, "type": "string"} for n in ("db", "schema", "table", "connector",
                                                       "version", "name")),
            {"name": "lsn", "type": "long"}]}}]}
    schema_id = registry.register("x-value", schema)
    out = io.BytesIO()
    out.write(b"\x00" + schema_id.to_bytes(4, "big"))
    schema_name, table_name = table.split(".")
    schemaless_writer(out, parse_schema(schema), {
        "after": row, "before": None, "op": "c",
        "source": {"db": "cdc", "schema": schema_name, "table": table_name,
                   "connector": "postgresql", "version": "2", "name": "them", "lsn": 90}})
    return out.getvalue()


def test_a_foreign_schema_with_an_owned_version_s_columns_is_evolved_from_it() -> None:
    registry, fake = _registry()
    columns = [{"name": "id", "type": "long"}, {"name": "name", "type": "string"},
               {"name": "email", "type": ["null", "string"]},
               {"name": "updated_at", "type": "string"}]
    payload = _foreign(columns, {"id": 1, "name": "Ada Lovelace", "email": None,
                                 "updated_at": "2026-01-01T00:00:00Z"},
                       "public.customers", registry)
    worker = SchemaRegistry("http://registry.invalid", fake)
    assert isinstance(RegistryWireFormat(SCHEMA_SET, worker).decode(payload), ForeignRecord)
    event = _stage(worker).decode(b'{"id":1}', payload)
    assert event is not None and event.after == {
        "id": 1, "first_name": "Ada", "last_name": "Lovelace", "email": None,
        "updated_at": "2026-01-01T00:00:00Z", "currency": "USD"}


def test_a_foreign_table_passes_with_logical_types_in_our_json_mapping() -> None:
    from decimal import Decimal

    registry, fake = _registry()
    columns = [{"name": "id", "type": "long"},
               {"name": "total", "type": {"type": "bytes", "logicalType": "decimal",
                                          "precision": 10, "scale": 2}},
               {"name": "blob", "type": "bytes"}]
    payload = _foreign(columns, {"id": 4, "total": Decimal("12.50"), "blob": b"\x01\x02"},
                       "shop.orders", registry)
    event = _stage(SchemaRegistry("http://registry.invalid", fake)).decode(
        b'{"id":4}', payload)
    assert event is not None and event.table_id == "shop.orders"
    assert event.after == {"id": 4, "total": "12.50", "blob": "AQI="}


def test_an_unknown_registry_id_is_a_decode_error_for_the_dead_letter_topic() -> None:
    registry, _ = _registry()
    results = _stage(registry).decode_batch([_Raw(b'{"id":1}', b"\x00\x00\x00\x03\x09\x02")])
    assert isinstance(results[0], UnknownSchemaIdError)


class _Raw:
    def __init__(self, key: bytes, value: bytes) -> None:
        self.key, self.value = key, value


def test_json_events_still_decode_with_a_registry() -> None:
    registry, _ = _registry()
    value = json.dumps(_envelope(V3_ROW)).encode()
    assert _stage(registry).decode(b'{"id":1}', value) == decode(b'{"id":1}', value)
