"""The Confluent wire format: header, round trips, resolution of old writers to newer readers."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import BadDataError, EventDecodeError
from pipeline.evolution import (
    AvroWireFormat,
    SchemaSet,
    TableVersion,
    UnknownSchemaIdError,
    WireEncodeError,
    WireFormatError,
    is_avro_wire,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
SCHEMA_SET = SchemaSet.load(SCHEMAS)
SOURCE = {
    "version": "cdc-pipeline",
    "connector": "postgresql",
    "name": "demo",
    "ts_ms": 1_700_000_000_000,
    "ts_us": 1_700_000_000_000_123,
    "snapshot": "false",
    "db": "shop",
    "sequence": '["10","20"]',
    "schema": "public",
    "table": "customers",
    "txId": 7,
    "lsn": 20,
    "xmin": None,
}


def envelope(after: dict[str, Any] | None, before: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "before": before,
        "after": after,
        "source": SOURCE,
        "op": "c" if before is None else "u",
        "ts_ms": 1_700_000_000_001,
        "transaction": None,
    }


@pytest.fixture(scope="module")
def wire() -> AvroWireFormat:
    return AvroWireFormat(SCHEMA_SET)


V1_ROW = {"id": 1, "name": "Ada Lovelace", "email": None, "updated_at": "2024-01-01T00:00:00Z"}
V2_ROW = {
    "id": 1,
    "first_name": "Ada",
    "last_name": "Lovelace",
    "email": "ada@example.com",
    "updated_at": "2024-01-01T00:00:00Z",
}


def test_header_is_magic_byte_then_big_endian_id(wire: AvroWireFormat) -> None:
    payload = wire.encode(102, envelope(V2_ROW))
    assert payload[0] == 0
    assert struct.unpack(">I", payload[1:5]) == (102,)
    assert is_avro_wire(payload)


def test_detects_json_versus_avro() -> None:
    assert not is_avro_wire(b'{"op": "c"}')
    assert not is_avro_wire(b"")
    assert not is_avro_wire(None)
    assert is_avro_wire(b"\x00\x00\x00\x00\x65\x00")


def test_current_version_round_trips(wire: AvroWireFormat) -> None:
    row = {**V2_ROW, "currency": "EUR"}
    decoded = wire.decode(wire.encode(103, envelope(row, before=row)))
    assert decoded.schema_id == 103
    assert decoded.version == 3
    assert decoded.record["after"] == row
    assert decoded.record["before"] == row
    assert decoded.record["source"] == SOURCE
    assert decoded.record["op"] == "u"


def test_additive_step_is_resolved_by_avro(wire: AvroWireFormat) -> None:
    decoded = wire.decode(wire.encode(102, envelope(V2_ROW)))
    assert decoded.schema_id == 102, "the id the payload carried"
    assert decoded.version == 3, "read as the current version: v2 -> v3 only adds a default"
    assert decoded.record["after"] == {**V2_ROW, "currency": "USD"}


def test_step_that_needs_code_is_left_to_the_upcasters(wire: AvroWireFormat) -> None:
    decoded = wire.decode(wire.encode(101, envelope(V1_ROW)))
    assert decoded.version == 1
    assert decoded.record["after"] == V1_ROW


def test_unknown_id(wire: AvroWireFormat) -> None:
    payload = b"\x00" + struct.pack(">I", 4242) + b"\x00"
    with pytest.raises(UnknownSchemaIdError, match="4242"):
        wire.decode(payload)
    with pytest.raises(UnknownSchemaIdError):
        wire.encode(4242, envelope(V2_ROW))


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda p: p[:3], "shorter than its header"),
        (lambda p: b"\x01" + p[1:], "magic byte 1"),
        (lambda p: p[:-8], "unreadable"),
        (lambda p: p + b"\x00\x00", "2 bytes left"),
    ],
)
def test_broken_payloads_are_decode_errors(wire: AvroWireFormat, mangle: Any, message: str) -> None:
    payload = mangle(wire.encode(103, envelope({**V2_ROW, "currency": "USD"})))
    with pytest.raises(WireFormatError, match=message) as info:
        wire.decode(payload)
    assert isinstance(info.value, EventDecodeError)


def test_record_that_does_not_fit_is_bad_data(wire: AvroWireFormat) -> None:
    with pytest.raises(WireEncodeError, match="public.customers v1") as info:
        wire.encode(101, envelope({**V1_ROW, "id": "not a number"}))
    assert isinstance(info.value, BadDataError)


# -- property: any row of any table version survives the wire --------------------------------
def _values(avro_type: Any) -> st.SearchStrategy[Any]:
    if isinstance(avro_type, list):
        return st.one_of(*(_values(member) for member in avro_type))
    if isinstance(avro_type, dict) and avro_type["type"] == "array":
        return st.lists(_values(avro_type["items"]), max_size=4)
    return {
        "null": st.none(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "string": st.text(max_size=20),
    }[avro_type]


def _rows(tv: TableVersion) -> st.SearchStrategy[tuple[TableVersion, dict[str, Any]]]:
    fields = {name: _values(type_) for name, type_ in tv.field_types.items()}
    return st.tuples(st.just(tv), st.fixed_dictionaries(fields))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(list(SCHEMA_SET)).flatmap(_rows))
def test_any_row_round_trips(case: tuple[TableVersion, dict[str, Any]]) -> None:
    tv, row = case
    wire = AvroWireFormat(SCHEMA_SET)
    decoded = wire.decode(wire.encode(tv.schema_id, envelope(row, before=row)))
    reader = SCHEMA_SET.get(tv.table, decoded.version)
    assert decoded.schema_id == tv.schema_id
    assert decoded.version >= tv.version
    after = decoded.record["after"]
    assert set(after) == set(reader.fields)
    assert {k: after[k] for k in row if k in after} == {k: v for k, v in row.items() if k in after}
    for name in set(reader.fields) - set(row):
        assert after[name] == reader.defaults()[name]
    assert decoded.record["before"] == after
