"""Change events: encoding, decoding our own and Debezium's JsonConverter output, errors."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import EventDecodeError
from pipeline.events import (
    MAX_POSITION,
    MAX_TS_MS,
    ChangeEvent,
    SourceInfo,
    decode,
    encode_key,
    encode_value,
)

# --- a hand-written Debezium PostgreSQL connector record ----------------------------------

DEBEZIUM_SOURCE = {
    "version": "2.5.0.Final",
    "connector": "postgresql",
    "name": "dbserver1",
    "ts_ms": 1559033904863,
    "snapshot": "false",
    "db": "inventory",
    "sequence": '["24023928","24023984"]',
    "schema": "public",
    "table": "customers",
    "txId": 555,
    "lsn": 24023984,
    "xmin": None,
}

DEBEZIUM_UPDATE = {
    "before": {"id": 1004, "first_name": "Anne", "email": "annek@noanswer.org"},
    "after": {"id": 1004, "first_name": "Anne Marie", "email": "annek@noanswer.org"},
    "source": DEBEZIUM_SOURCE,
    "op": "u",
    "ts_ms": 1559033904961,
    "transaction": None,
}

DEBEZIUM_KEY = {"id": 1004}


def _schema_wrapped(payload: dict, name: str) -> dict:
    """What JsonConverter writes with schemas.enable=true (schema abbreviated but realistic)."""
    return {
        "schema": {"type": "struct", "optional": False, "name": name, "fields": []},
        "payload": payload,
    }


def _b(doc: object) -> bytes:
    return json.dumps(doc).encode()


def _check_debezium_update(event: ChangeEvent | None) -> None:
    assert event is not None
    assert event.op == "u"
    assert event.key == {"id": 1004}
    assert event.before == {"id": 1004, "first_name": "Anne", "email": "annek@noanswer.org"}
    assert event.after == {"id": 1004, "first_name": "Anne Marie", "email": "annek@noanswer.org"}
    assert event.ts_ms == 1559033904961
    assert event.table_id == "public.customers"
    src = event.source
    assert src.connector == "postgresql"
    assert src.name == "dbserver1"
    assert src.db == "inventory"
    assert src.tx_id == 555
    assert src.lsn == 24023984
    assert src.commit_lsn == 24023928  # first element of the sequence array
    assert src.snapshot == "false"
    assert src.ts_ms == 1559033904863  # no ts_us in the record: derived from ts_ms
    assert event.version == 24023984  # the change's LSN
    assert event.row == event.after


def test_decode_debezium_schemas_disabled() -> None:
    _check_debezium_update(decode(_b(DEBEZIUM_KEY), _b(DEBEZIUM_UPDATE)))


def test_decode_debezium_with_schema_wrapper_on_key_and_value() -> None:
    key = _schema_wrapped(DEBEZIUM_KEY, "dbserver1.public.customers.Key")
    value = _schema_wrapped(DEBEZIUM_UPDATE, "dbserver1.public.customers.Envelope")
    _check_debezium_update(decode(_b(key), _b(value)))


def test_decode_debezium_delete_row_is_before_image() -> None:
    value = dict(DEBEZIUM_UPDATE, op="d", after=None)
    event = decode(_b(DEBEZIUM_KEY), _b(value))
    assert event is not None
    assert event.op == "d"
    assert event.after is None
    assert event.row == DEBEZIUM_UPDATE["before"]


def test_decode_debezium_truncate_without_key() -> None:
    value = {"before": None, "after": None, "source": DEBEZIUM_SOURCE, "op": "t", "ts_ms": 1}
    event = decode(None, _b(value))
    assert event is not None
    assert event.op == "t"
    assert event.key is None


def test_tombstone_is_none() -> None:
    assert decode(_b(DEBEZIUM_KEY), None) is None
    assert decode(None, None) is None


# --- our own encoding -------------------------------------------------------------------

def _event(**overrides: object) -> ChangeEvent:
    source = SourceInfo(
        connector="postgresql", name="shop", db="shop", schema="public", table="orders",
        ts_us=1_700_000_000_123_456, tx_id=777, lsn=0x16B374D848, commit_lsn=0x16B374D000,
    )
    fields: dict[str, object] = dict(
        op="u", key={"id": 5}, before=None, after={"id": 5, "total": "12.50", "note": None},
        source=source, ts_ms=1_700_000_000_200,
    )
    fields.update(overrides)
    return ChangeEvent(**fields)  # type: ignore[arg-type]


def test_encoded_value_is_a_debezium_envelope() -> None:
    event = _event()
    doc = json.loads(encode_value(event))
    assert set(doc) >= {"before", "after", "source", "op", "ts_ms"}
    assert doc["op"] == "u"
    src = doc["source"]
    assert src["connector"] == "postgresql"
    assert src["ts_ms"] == 1_700_000_000_123  # ts_us // 1000
    assert src["txId"] == 777
    assert src["lsn"] == 0x16B374D848
    # Debezium: a JSON array *text* of [last commit LSN, this LSN], both as strings.
    assert json.loads(src["sequence"]) == [str(0x16B374D000), str(0x16B374D848)]
    assert json.loads(encode_key(event)) == {"id": 5}


def test_encode_key_of_truncate_is_none() -> None:
    assert encode_key(_event(op="t", key=None, after=None)) is None


def test_roundtrip_keeps_everything() -> None:
    event = _event()
    assert decode(encode_key(event), encode_value(event)) == event


def test_roundtrip_without_previous_commit() -> None:
    event = _event(op="c")
    src = SourceInfo(connector="postgresql", name="n", db="d", schema="s", table="t",
                     ts_us=5_000_001, tx_id=1, lsn=100, commit_lsn=None)
    event = _event(op="c", source=src)
    assert json.loads(json.loads(encode_value(event))["source"]["sequence"]) == [None, "100"]
    assert decode(encode_key(event), encode_value(event)) == event


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=20),
    st.floats(allow_nan=False, allow_infinity=False),
)
rows = st.dictionaries(st.text(min_size=1, max_size=8), json_scalars, max_size=5)


@given(
    op=st.sampled_from(["c", "u", "d", "r"]),
    key=st.dictionaries(st.text(min_size=1, max_size=5), st.integers(0, 2**40), min_size=1,
                        max_size=3),
    before=st.one_of(st.none(), rows),
    after=rows,
    ts_us=st.integers(0, MAX_TS_MS * 1000),
    lsn=st.integers(1, MAX_POSITION),
    commit_lsn=st.one_of(st.none(), st.integers(1, MAX_POSITION)),
    tx_id=st.one_of(st.none(), st.integers(0, 2**32)),
    snapshot=st.sampled_from(["false", "true", "last"]),
)
def test_roundtrip_property(op, key, before, after, ts_us, lsn, commit_lsn, tx_id, snapshot):
    after = {**after, **key}  # a row image holds its key's columns
    if op == "d":
        before, after = after, None
    src = SourceInfo(connector="postgresql", name="srv", db="db", schema="public", table="t",
                     ts_us=ts_us, tx_id=tx_id, lsn=lsn, commit_lsn=commit_lsn,
                     snapshot=snapshot)
    event = ChangeEvent(op, key, before, after, src, ts_ms=ts_us // 1000)
    assert decode(encode_key(event), encode_value(event)) == event


def test_version_is_the_lsn_never_a_time() -> None:
    assert _event().version == 0x16B374D848
    no_lsn = SourceInfo(connector="x", name="x", db="x", schema="s", table="t", ts_us=42)
    with pytest.raises(ValueError, match="no source.lsn"):
        _ = _event(source=no_lsn).version


def test_an_event_without_a_source_position_is_bad_data() -> None:
    source = {k: v for k, v in DEBEZIUM_SOURCE.items() if k != "lsn"}
    value = {"before": None, "after": {"id": 1}, "source": source, "op": "c"}
    with pytest.raises(EventDecodeError, match="source.lsn"):
        decode(b'{"id": 1}', orjson.dumps(value))


def test_a_null_commit_after_a_restart_is_unknown_not_zero() -> None:
    source = {**DEBEZIUM_SOURCE, "sequence": '[null,"500"]', "lsn": 500}
    value = {"before": None, "after": {"id": 1}, "source": source, "op": "u"}
    event = decode(b'{"id": 1}', orjson.dumps(value))
    assert event is not None and event.source.commit_lsn is None


def test_an_events_position_is_kept_once_and_a_copy_with_other_fields_gets_its_own() -> None:
    import dataclasses

    from pipeline.positions import ChangePosition

    event = _event()
    assert event.position == ChangePosition(0x16B374D000, 0x16B374D848)
    assert event.position is event.position  # worked out once
    read = dataclasses.replace(event, op="r")
    assert read.position.snapshot and not event.position.snapshot
    moved = dataclasses.replace(event, source=dataclasses.replace(event.source, lsn=1))
    assert moved.position.lsn == 1
    assert moved == dataclasses.replace(moved) and "_position" not in repr(event)


def test_later_lsn_means_higher_version() -> None:
    src1 = SourceInfo(connector="p", name="n", db="d", schema="s", table="t", ts_us=10**15, lsn=200)
    src2 = SourceInfo(connector="p", name="n", db="d", schema="s", table="t", ts_us=1, lsn=300)
    # the older commit timestamp does not matter: the LSN orders the changes
    assert _event(source=src2).version > _event(source=src1).version


# --- errors -----------------------------------------------------------------------------

GOOD_VALUE = {"before": None, "after": {"id": 1}, "source": DEBEZIUM_SOURCE, "op": "c"}


@pytest.mark.parametrize(
    ("key", "value", "mentions"),
    [
        (b'{"id": 1}', b"{not json", "JSON"),
        (b"{oops", _b(GOOD_VALUE), "JSON"),
        (b'{"id": 1}', b"[1, 2, 3]", "object"),
        (b'{"id": 1}', b'"a string"', "object"),
        (b'{"id": 1}', _b(dict(GOOD_VALUE, op="x")), "op"),
        (b'{"id": 1}', _b({k: v for k, v in GOOD_VALUE.items() if k != "op"}), "op"),
        (b"[1]", _b(GOOD_VALUE), "key"),
        (None, _b(GOOD_VALUE), "key"),
        (None, _b(dict(GOOD_VALUE, op="u", before={"id": 1})), "key"),
        (None, _b(dict(GOOD_VALUE, op="d", before={"id": 1}, after=None)), "key"),
        (b'{"id": 1}', _b(dict(GOOD_VALUE, after=None)), "after"),
        (b'{"id": 1}', _b(dict(GOOD_VALUE, op="r", after=None)), "after"),
        (b'{"id": 1}', _b(dict(GOOD_VALUE, after=[1])), "after"),
        (b'{"id": 1}', _b(dict(GOOD_VALUE, source=None)), "source"),
        (b'{"id": 1}', _b(dict(GOOD_VALUE, source={"db": "x"})), "source"),
    ],
    ids=[
        "value-not-json", "key-not-json", "value-array", "value-string", "bad-op", "no-op",
        "key-not-object", "create-without-key", "update-without-key", "delete-without-key",
        "create-without-after", "read-without-after", "after-not-object", "no-source",
        "source-without-table",
    ],
)
def test_decode_errors(key: bytes | None, value: bytes, mentions: str) -> None:
    with pytest.raises(EventDecodeError) as info:
        decode(key, value)
    assert mentions in str(info.value)
    assert info.value.stage == "decode"


def test_a_logical_decoding_message_is_skipped_not_bad_data() -> None:
    from pipeline.errors import NotARowChange

    value = {"op": "m", "ts_ms": 1, "source": DEBEZIUM_SOURCE,
             "message": {"prefix": "p", "content": "aGk="}}
    with pytest.raises(NotARowChange):
        decode(b'{"prefix": "p"}', orjson.dumps(value))
