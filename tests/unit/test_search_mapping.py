"""How the search sink maps columns: from the column's type when the event carries it,
else from the values, so that NaN/Infinity, mixed arrays and decimals are taken; and how a
refused field is widened when a column's type changes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.events import COLUMN_TYPES, decode
from pipeline.sinks.search_mapping import (
    BOOLEAN,
    DISABLED,
    DOUBLE,
    LONG,
    STRING,
    conflicting_field,
    field_values,
    mapping_for_type,
    mapping_for_values,
    widened,
    with_field,
)


@pytest.mark.parametrize(("values", "expected"), [
    ([1, 2**62, None], LONG),                      # bigint stays exact
    ([1, 2.5], DOUBLE),                            # an int first and a float later: one type
    (["NaN", 1.5, "-Infinity"], DOUBLE),           # non-finite floats as JSON carries them
    ([[1.5, "NaN", 2], ["Infinity"]], DOUBLE),     # arrays count element by element
    (["NaN", "Infinity"], STRING),                 # only such text: could be a text column
    (["12.50", "NaN"], STRING),                    # numeric: exact text, numeric sub-field
    ([1, "a"], STRING),
    ([True, False], BOOLEAN),
    ([True, 1], STRING),
    ([{"a": 1}, 2], DISABLED),
    ([{"a": 1}], None),                            # objects: their fields map themselves
    ([None, []], None),                            # nothing known yet
])
def test_mapping_from_values(values: list[Any], expected: dict[str, Any] | None) -> None:
    assert mapping_for_values(values) == expected


def test_string_fields_keep_exact_text_and_index_numbers_and_dates() -> None:
    assert STRING["type"] == "keyword"
    assert STRING["fields"]["num"] == {"type": "double", "ignore_malformed": True}
    assert STRING["fields"]["date"]["ignore_malformed"] is True
    assert "text" in STRING["fields"]
    assert LONG["coerce"] is False  # a fraction is a type change, not truncated


@pytest.mark.parametrize(("schema", "expected"), [
    ({"type": "int64", "optional": False}, LONG),
    ({"type": "int32", "name": "io.debezium.time.Date"}, LONG),
    ({"type": "double"}, None),  # not a Kafka Connect type name
    ({"type": "float64"}, DOUBLE),
    ({"type": "boolean"}, BOOLEAN),
    ({"type": "string", "name": "io.debezium.time.ZonedTimestamp"}, STRING),
    ({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal"}, STRING),
    ({"type": "array", "items": {"type": "float32"}}, DOUBLE),
    ({"type": "struct", "fields": []}, None),
])
def test_mapping_from_column_type(schema: dict[str, Any], expected: Any) -> None:
    assert mapping_for_type(schema) == expected


def test_decode_keeps_column_types_of_a_schema_wrapped_record() -> None:
    columns = [{"type": "int32", "optional": False, "field": "id"},
               {"type": "float64", "optional": True, "field": "score"}]
    image = {"type": "struct", "optional": True, "field": "after", "fields": columns}
    value = {
        "schema": {"type": "struct", "fields": [{**image, "field": "before"}, image]},
        "payload": {"before": None, "after": {"id": 1, "score": "NaN"}, "op": "c",
                    "source": {"table": "items", "schema": "public", "lsn": 5}},
    }
    event = decode(orjson.dumps({"id": 1}), orjson.dumps(value))
    assert event is not None
    assert event.extra[COLUMN_TYPES] == {"id": columns[0], "score": columns[1]}
    plain = decode(orjson.dumps({"id": 1}), orjson.dumps(value["payload"]))
    assert plain is not None and COLUMN_TYPES not in plain.extra


@pytest.mark.parametrize(("reason", "field"), [
    ("[1:6] failed to parse field [qty] of type [long] in document with id '4'", "qty"),
    ("mapper [tags.n] cannot be changed from type [long] to [keyword]", "tags.n"),
    ("[1:7] object mapping for [meta] tried to parse field [meta] as object, but found a "
     "concrete value", "meta"),
    ("[1:8] failed to parse field [_id] of type [_id] in document with id '11'", None),
    ("[1:2] failed to parse: field name cannot be an empty string", None),
    ("Limit of total fields [4] has been exceeded", None),
])
def test_conflicting_field_from_the_refusal(reason: str, field: str | None) -> None:
    assert conflicting_field({"type": "document_parsing_exception", "reason": reason}) == field


@pytest.mark.parametrize(("current", "values", "expected"), [
    (LONG, ["a dozen"], STRING),       # ALTER COLUMN qty TYPE text
    (LONG, [2.5, "NaN"], DOUBLE),      # ... TYPE float8
    ({"type": "long"}, ["12"], STRING),
    (DOUBLE, [{"a": 1}], DISABLED),
    (BOOLEAN, ["maybe"], STRING),
    ({"properties": {"a": LONG}}, [3], DISABLED),
    (STRING, [{"a": 1}], DISABLED),
    (STRING, ["x"], None),             # nothing wider left for plain values
    (DISABLED, [1], None),
    (None, [1.5, "x"], STRING),        # not mapped yet: decided from the values
])
def test_widened(current: Any, values: list[Any], expected: Any) -> None:
    assert widened(current, values) == expected


def test_with_field_and_field_values_follow_dotted_paths() -> None:
    mappings = {"dynamic_templates": [], "properties": {
        "qty": LONG, "meta": {"properties": {"n": LONG}}}}
    changed = with_field(mappings, "meta.n", STRING)
    assert changed["properties"]["meta"]["properties"]["n"] == STRING
    assert changed["properties"]["qty"] == LONG
    assert mappings["properties"]["meta"]["properties"]["n"] == LONG  # the input is kept
    assert with_field(mappings, "qty.x", STRING)["properties"]["qty"] == DISABLED
    doc = {"meta": [{"n": 1}, {"n": "a"}], "a.b": 2}
    assert field_values(doc, "meta.n") == [1, "a"]
    assert field_values(doc, "a.b") == [2]
