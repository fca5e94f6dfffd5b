"""Every field of the envelope is checked at decode time: a hostile record is bad data (an
EventDecodeError naming the field), never an exception that stops a worker, and an event that
decodes cannot make a later stage raise."""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.dedup import row_key
from pipeline.errors import EventDecodeError, NotARowChange
from pipeline.events import (
    COLUMN_TYPES,
    MAX_KEY_BYTES,
    MAX_POSITION,
    UNAVAILABLE_VALUE,
    decode,
)
from pipeline.positions import ChangePosition
from pipeline.sinks.search import document_id
from pipeline.sinks.search_mapping import mapping_for_type

SOURCE = {"version": "3.0", "connector": "postgresql", "name": "srv", "ts_ms": 1_700_000_000_000,
          "snapshot": "false", "db": "shop", "sequence": '["100","200"]', "schema": "public",
          "table": "orders", "txId": 7, "lsn": 200, "xmin": None}
VALUE = {"before": None, "after": {"id": 1, "total": "9.50"}, "source": SOURCE, "op": "c",
         "ts_ms": 1_700_000_000_100, "transaction": None}
KEY = {"id": 1}


def record(path: str, value: Any) -> bytes:
    """The good value with one field (``a.b`` for a nested one) replaced."""
    doc = copy.deepcopy(VALUE)
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node[part]
    node[last] = value
    return json.dumps(doc).encode()  # orjson cannot write integers over 64 bits


def test_the_good_record_decodes() -> None:
    event = decode(orjson.dumps(KEY), orjson.dumps(VALUE))
    assert event is not None
    assert (event.version, event.source.commit_lsn, event.ts_ms) == (200, 100, 1_700_000_000_100)


@pytest.mark.parametrize(("field", "value"), [
    ("ts_ms", "abc"), ("ts_ms", [1]), ("ts_ms", 1.5), ("ts_ms", True), ("ts_ms", -1),
    ("ts_ms", 2**64), ("ts_us", "1"), ("ts_ns", {}),
    ("transaction", "tx-1"), ("transaction", [1]),
    ("source.lsn", 2**63), ("source.lsn", 2**64 + 5), ("source.lsn", -1), ("source.lsn", "200"),
    ("source.lsn", 200.0), ("source.lsn", True), ("source.lsn", [200]),
    ("source.ts_ms", "abc"), ("source.ts_ms", 10**20), ("source.ts_us", -5),
    ("source.txId", "seven"), ("source.txId", 2**70), ("source.xmin", "x"),
    ("source.sequence", 5), ("source.sequence", "["), ("source.sequence", '["a","200"]'),
    ("source.sequence", '["100"]'), ("source.sequence", '["-1","200"]'),
    ("source.sequence", '["99999999999999999999","200"]'), ("source.sequence", '{"a":1}'),
    ("source.sequence", '[1.5,"200"]'),
    ("source.schema", None), ("source.schema", 5), ("source.schema", ""),
    ("source.table", ["orders"]), ("source.table", {}),
    ("source.connector", 5), ("source.name", {}), ("source.db", [1]), ("source.version", 3),
    ("source.snapshot", 1),
])
def test_a_field_of_the_wrong_type_or_range_is_bad_data_that_names_it(field: str,
                                                                    value: Any) -> None:
    with pytest.raises(EventDecodeError, match=f"'{field}'"):
        decode(orjson.dumps(KEY), record(field, value))


def test_a_position_beyond_an_index_version_is_bad_data() -> None:
    """Elasticsearch refuses a version over 2^63-1 ('Integer exceeds 64-bit range'): such a
    record used to wedge the search sink; it is now refused before any sink sees it."""
    assert decode(orjson.dumps(KEY), record("source.lsn", MAX_POSITION)) is not None
    with pytest.raises(EventDecodeError, match="'source.lsn' must be a whole number from 0"):
        decode(orjson.dumps(KEY), record("source.lsn", MAX_POSITION + 1))


def test_an_unknown_commit_is_still_accepted() -> None:
    event = decode(orjson.dumps(KEY), record("source.sequence", '[null,"200"]'))
    assert event is not None and event.source.commit_lsn is None
    assert decode(orjson.dumps(KEY), record("source.sequence", None)) is not None


def test_a_missing_position_or_a_message_keep_their_meaning() -> None:
    source = {k: v for k, v in SOURCE.items() if k != "lsn"}
    with pytest.raises(EventDecodeError, match="'source.lsn' is missing"):
        decode(orjson.dumps(KEY), record("source", source))
    with pytest.raises(NotARowChange):
        decode(b'{"prefix":"p"}', record("op", "m"))


def test_an_empty_key_names_no_row() -> None:
    """``{}`` would put every such record on one document and one dedup entry."""
    with pytest.raises(EventDecodeError, match="key {} names no primary-key column"):
        decode(b"{}", orjson.dumps(VALUE))


def test_a_truncate_ignores_its_key() -> None:
    value = orjson.dumps({**VALUE, "op": "t", "after": None})
    for key in (None, b"{}", b'{"id": 1}'):
        event = decode(key, value)
        assert event is not None and event.op == "t" and event.key is None


def test_a_key_that_disagrees_with_the_after_image_is_bad_data() -> None:
    with pytest.raises(EventDecodeError, match="'after.id' disagrees with the key's value 2:"):
        decode(b'{"id": 2}', orjson.dumps(VALUE))
    with pytest.raises(EventDecodeError, match="'after.id' disagrees"):
        decode(b'{"id": true}', orjson.dumps(VALUE))  # JSON true is not 1
    with pytest.raises(EventDecodeError, match="key column 'sku' is missing from 'after'"):
        decode(b'{"id": 1, "sku": "a"}', orjson.dumps(VALUE))


def test_a_delete_checks_its_before_image_where_it_has_the_key() -> None:
    delete = {**VALUE, "op": "d", "after": None}
    assert decode(b'{"id": 1}', orjson.dumps(delete)) is not None  # no before image
    full = {**delete, "before": {"id": 1, "total": None}}
    assert decode(b'{"id": 1}', orjson.dumps(full)) is not None
    with pytest.raises(EventDecodeError, match="'before.id' disagrees"):
        decode(b'{"id": 3}', orjson.dumps(full))


def test_an_unchanged_toast_key_column_is_not_a_disagreement() -> None:
    value = record("after", {"id": UNAVAILABLE_VALUE, "total": "1"})
    assert decode(orjson.dumps(KEY), value) is not None


def test_an_oversized_key_is_bad_data() -> None:
    big = "k" * MAX_KEY_BYTES
    value = record("after", {"id": big})
    with pytest.raises(EventDecodeError, match="more than 65536"):
        decode(orjson.dumps({"id": big}), value)


def test_key_and_value_say_which_one_is_not_json() -> None:
    with pytest.raises(EventDecodeError, match="value is not valid JSON"):
        decode(orjson.dumps(KEY), b"\xff\xfe{")
    with pytest.raises(EventDecodeError, match="key is not valid JSON"):
        decode(b'{"id": "\xff"}', orjson.dumps(VALUE))


def wrapped(columns: Any) -> bytes:
    schema = {"type": "struct", "fields": [{"field": "after", "type": "struct",
                                            "fields": columns}]}
    return json.dumps({"schema": schema, "payload": VALUE}).encode()


def test_column_schemas_are_kept_when_well_formed() -> None:
    event = decode(orjson.dumps(KEY), wrapped(
        [{"field": "id", "type": "int32"},
         {"field": "tags", "type": "array", "items": {"type": "string"}}]))
    assert event is not None
    assert set(event.extra[COLUMN_TYPES]) == {"id", "tags"}


@pytest.mark.parametrize("columns", [
    5, [5], [{"type": "int32"}], [{"field": "id", "type": ["int32"]}],
    [{"field": "id", "type": "array", "items": "string"}],
    [{"field": "id", "type": "array", "items": {"type": {"x": 1}}}],
])
def test_malformed_column_schemas_are_bad_data(columns: Any) -> None:
    with pytest.raises(EventDecodeError, match="'schema.fields"):
        decode(orjson.dumps(KEY), wrapped(columns))


def test_deeply_nested_array_schemas_are_bad_data() -> None:
    """The search sink walks ``items`` recursively: a thousand levels would overflow it."""
    column: dict[str, Any] = {"type": "string"}
    for _ in range(200):
        column = {"type": "array", "items": column}
    with pytest.raises(EventDecodeError, match="nests arrays deeper"):
        decode(orjson.dumps(KEY), wrapped([{"field": "id", **column}]))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=10)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
FIELDS = ["op", "ts_ms", "ts_us", "before", "after", "transaction", "source",
          *(f"source.{name}" for name in SOURCE)]


@settings(max_examples=400)
@given(changes=st.lists(st.tuples(st.sampled_from(FIELDS), json_values), max_size=3),
       key=json_values)
def test_no_value_in_any_field_makes_decode_or_a_later_stage_raise(
    changes: list[tuple[str, Any]], key: Any
) -> None:
    doc = copy.deepcopy(VALUE)
    for path, value in changes:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node[last] = value
    try:
        event = decode(json.dumps(key).encode(), json.dumps(doc).encode())
    except (EventDecodeError, NotARowChange):
        return
    assert event is not None
    assert 0 <= event.version <= MAX_POSITION
    ChangePosition.of(event)
    row_key(event)
    if event.key is not None:
        document_id(event.key)
    for column in event.extra.get(COLUMN_TYPES, {}).values():
        mapping_for_type(column)
