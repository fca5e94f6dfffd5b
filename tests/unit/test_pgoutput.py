"""pgoutput decoder, on real messages captured from PostgreSQL 15.

The bytes come from ``tests/fixtures/pgoutput/pgoutput_v1.json`` (regenerate with
``tests/fixtures/capture_pgoutput.py``). Expected values are written here from the SQL the
capture ran, never taken from the decoder. Server-assigned numbers (OIDs, xids, LSNs, commit
times) are checked for consistency with the capture's own metadata and with each other.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import pickle
import struct
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.positions import Lsn
from pipeline.sources.postgres import values as v
from pipeline.sources.postgres.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    Message,
    Origin,
    PgoutputDecodeError,
    PgoutputMessage,
    Relation,
    RelationCache,
    Truncate,
    Type,
    UnchangedToast,
    UnknownRelationError,
    Update,
    decode_message,
    take_replaced_values,
)
from pipeline.sources.postgres.values import converter_for

FIXTURE = Path(__file__).parents[1] / "fixtures" / "pgoutput" / "pgoutput_v1.json"
NUMERIC_10_2 = (10 << 16 | 2) + 4  # atttypmod of numeric(10,2): VARHDRSZ + precision/scale

ITEMS_COLUMNS = (
    Column(True, "id", v.INT4_OID, -1),
    Column(False, "name", v.TEXT_OID, -1),
    Column(False, "qty", v.INT4_OID, -1),
    Column(False, "price", v.NUMERIC_OID, NUMERIC_10_2),
    Column(False, "note", v.TEXT_OID, -1),
)


@cache
def _fixture() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text())
    return data


@cache
def _decoded(case: str) -> tuple[PgoutputMessage, ...]:
    return tuple(decode_message(bytes.fromhex(m["hex"])) for m in _rows(case))


def _rows(case: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = _fixture()["cases"][case]["messages"]
    return rows


def _kinds(case: str) -> list[type]:
    return [type(m) for m in _decoded(case)]


def _only(case: str, kind: type[Any]) -> Any:
    found = [m for m in _decoded(case) if isinstance(m, kind)]
    assert len(found) == 1, f"{case}: expected one {kind.__name__}, got {found}"
    return found[0]


def _row_dict(relation: Relation, values: tuple[Any, ...]) -> dict[str, Any]:
    """Convert a decoded text tuple with per-column converters, as the pipeline would."""
    converters = [converter_for(c.type_oid) for c in relation.columns]
    return {
        col.name: None if text is None else conv(text)
        for col, conv, text in zip(relation.columns, converters, values, strict=True)
    }


ALL_CASES = sorted(json.loads(FIXTURE.read_text())["cases"])


def test_fixture_has_every_required_case() -> None:
    assert set(ALL_CASES) >= {
        "insert", "insert_nulls", "update_no_old", "update_key_changed", "delete_key",
        "update_old_full", "delete_old_full", "relation_altered", "type_messages", "truncate",
        "message_transactional", "message_non_transactional", "origin", "unchanged_toast",
        "alltypes", "binary_insert",
    }  # fmt: skip
    assert _fixture()["proto_version"] == 1
    assert _fixture()["server_version"].startswith("15.")


# --- protocol-level consistency, for every captured transaction --------------------------------


@pytest.mark.parametrize("case", ALL_CASES)
def test_transactions_are_consistent_with_the_slot_metadata(case: str) -> None:
    """Begin/Commit agree with each other and with the lsn/xid the slot reported."""
    begin: Begin | None = None
    for row, msg in zip(_rows(case), _decoded(case), strict=True):
        if isinstance(msg, Begin):
            assert begin is None, "nested Begin"
            begin = msg
            assert msg.xid == row["xid"]
        elif isinstance(msg, Commit):
            assert begin is not None, "Commit without Begin"
            assert msg.commit_lsn == begin.final_lsn
            assert msg.commit_ts_us == begin.commit_ts_us
            assert msg.end_lsn == Lsn.parse(row["lsn"])  # the slot reports the end LSN
            assert msg.end_lsn > msg.commit_lsn
            assert msg.flags == 0
            begin = None
        elif isinstance(msg, Message):
            assert msg.lsn == Lsn.parse(row["lsn"])
            assert (begin is not None) == msg.transactional
        else:
            assert begin is not None, f"{msg} outside a transaction"
            assert row["xid"] == begin.xid
    assert begin is None, "transaction not committed"


@pytest.mark.parametrize("case", sorted(set(ALL_CASES) - {"origin"}))
def test_commit_time_is_unix_epoch_microseconds(case: str) -> None:
    captured_at = _fixture()["captured_at_unix_us"]
    for msg in _decoded(case):
        if isinstance(msg, Begin | Commit):
            # Committed during the capture, which took seconds; the PG epoch is 30 years off.
            assert captured_at - 3_600_000_000 < msg.commit_ts_us <= captured_at


@pytest.mark.parametrize("case", ALL_CASES)
def test_row_messages_follow_their_relation(case: str) -> None:
    cache = RelationCache()
    for msg in _decoded(case):
        cache.observe(msg)
        if isinstance(msg, Insert | Update):
            assert len(msg.new) == len(cache.get(msg.relation_oid).columns)
        if isinstance(msg, Update | Delete) and msg.old is not None:
            assert len(msg.old) == len(cache.get(msg.relation_oid).columns)
        if isinstance(msg, Truncate):
            assert all(oid in cache for oid in msg.relation_oids)


# --- one case at a time ---------------------------------------------------------------------


def test_insert() -> None:
    assert _kinds("insert") == [Begin, Relation, Insert, Commit]
    relation = _only("insert", Relation)
    assert (relation.namespace, relation.name) == ("public", "items")
    assert relation.replica_identity == "d"
    assert relation.columns == ITEMS_COLUMNS
    insert = _only("insert", Insert)
    assert insert.relation_oid == relation.oid
    assert insert.new == ("1", "widget", "3", "9.99", "first")
    assert _row_dict(relation, insert.new) == {
        "id": 1, "name": "widget", "qty": 3, "price": "9.99", "note": "first",
    }  # fmt: skip


def test_insert_nulls() -> None:
    assert _only("insert_nulls", Insert).new == ("2", None, None, None, "only note")


def test_update_without_old_tuple() -> None:
    update = _only("update_no_old", Update)
    assert (update.old, update.old_kind) == (None, None)
    assert update.new == ("1", "widget", "4", "9.99", None)


def test_update_of_the_key_sends_the_old_key() -> None:
    update = _only("update_key_changed", Update)
    assert update.old_kind == "K"
    assert update.old == ("1", None, None, None, None)  # non-key columns are sent as null
    assert update.new == ("10", "widget", "4", "9.99", None)


def test_delete_with_default_identity_sends_the_key() -> None:
    delete = _only("delete_key", Delete)
    assert (delete.old_kind, delete.old) == ("K", ("10", None, None, None, None))
    assert delete.relation_oid == _only("delete_key", Relation).oid


def test_replica_identity_full_update_sends_the_whole_old_row() -> None:
    assert _kinds("update_old_full") == [Begin, Relation, Insert, Commit, Begin, Update, Commit]
    relation = _only("update_old_full", Relation)
    assert relation.replica_identity == "f"
    # With REPLICA IDENTITY FULL every column is flagged as part of the identity.
    assert [(c.name, c.is_key) for c in relation.columns] == [
        ("id", True), ("name", True), ("qty", True),
    ]  # fmt: skip
    update = _only("update_old_full", Update)
    assert update.old_kind == "O"
    assert (update.old, update.new) == (("1", "alpha", "1"), ("1", "alpha", "2"))


def test_replica_identity_full_delete_sends_the_whole_old_row() -> None:
    delete = _only("delete_old_full", Delete)
    assert (delete.old_kind, delete.old) == ("O", ("1", "alpha", "2"))


def test_alter_table_resends_the_relation_and_the_cache_replaces_it() -> None:
    # The ALTER TABLE transaction itself changes no published row: PostgreSQL 15 skips it.
    assert _kinds("relation_altered") == [
        Begin, Relation, Insert, Commit, Begin, Relation, Insert, Commit,
    ]  # fmt: skip
    _, before, first, _, _, after, second, _ = _decoded("relation_altered")
    assert isinstance(before, Relation) and isinstance(after, Relation)
    assert isinstance(first, Insert) and isinstance(second, Insert)
    assert before.oid == after.oid
    assert [c.name for c in before.columns] == ["id", "a"]
    assert after.columns[2] == Column(False, "b", v.INT4_OID, -1)
    assert (first.new, second.new) == (("1", "x"), ("2", "y", "8"))

    cache = RelationCache()
    cache.observe(before)
    assert cache.get(before.oid) is before
    cache.observe(after)
    assert cache.get(before.oid) is after
    assert len(cache) == 1


def test_enum_and_domain_columns_send_type_messages_first() -> None:
    assert _kinds("type_messages") == [Begin, Type, Type, Relation, Insert, Commit]
    _, mood, domain, relation, insert, _ = _decoded("type_messages")
    assert isinstance(mood, Type) and isinstance(domain, Type) and isinstance(relation, Relation)
    assert isinstance(insert, Insert)
    assert (mood.namespace, mood.name) == ("public", "mood")
    # A domain's Type message carries the domain's OID but its *base* type's name, with the
    # empty namespace that stands for pg_catalog.
    assert (domain.namespace, domain.name) == ("", "int4")
    feeling, amount = relation.columns[1], relation.columns[2]
    assert (feeling.name, feeling.type_oid) == ("feeling", mood.oid)
    assert (amount.name, amount.type_oid) == ("amount", domain.oid)
    assert insert.new == ("1", "happy", "42")

    cache = RelationCache()
    for msg in _decoded("type_messages"):
        cache.observe(msg)
    assert cache.get_type(mood.oid) == mood
    assert cache.get_type(v.INT4_OID) is None  # built-in types never get a Type message
    # How a consumer converts a domain value like its base type:
    base = cache.get_type(amount.type_oid)
    assert base is not None and base.namespace == ""
    assert converter_for(v.BUILTIN_TYPE_OIDS[base.name])("42") == 42


def test_truncate() -> None:
    messages = _decoded("truncate")
    truncates = [m for m in messages if isinstance(m, Truncate)]
    oid_by_name = {m.name: m.oid for m in messages if isinstance(m, Relation)}
    assert truncates == [
        Truncate((oid_by_name["trunc_a"], oid_by_name["trunc_b"]), cascade=True,
                 restart_identity=True),
        Truncate((oid_by_name["items_full"],), cascade=False, restart_identity=False),
    ]  # fmt: skip


def test_transactional_message() -> None:
    assert _kinds("message_transactional") == [Begin, Message, Commit]
    msg = _only("message_transactional", Message)
    assert (msg.transactional, msg.prefix, msg.content) == (True, "prefix", b"content")


def test_non_transactional_message_comes_alone_even_from_a_rolled_back_transaction() -> None:
    assert _kinds("message_non_transactional") == [Message]
    assert _rows("message_non_transactional")[0]["xid"] == 0
    msg = _only("message_non_transactional", Message)
    assert (msg.transactional, msg.prefix, msg.content) == (False, "audit", b"\x00\x01hi\xff")


def test_origin_follows_begin() -> None:
    assert _kinds("origin") == [Begin, Origin, Relation, Insert, Commit]
    begin, origin = _decoded("origin")[:2]
    assert origin == Origin(Lsn.parse("0/ABCDEF12"), "myorigin")
    # pg_replication_origin_xact_setup also sets the commit timestamp sent for the transaction.
    assert isinstance(begin, Begin) and begin.commit_ts_us == 1_704_067_200_000_000
    assert _only("origin", Insert).new == ("3", "from origin", "1", "1.00", None)


def test_unchanged_toast_value() -> None:
    body = "".join(hashlib.md5(str(i).encode()).hexdigest() for i in range(1, 321))
    assert _kinds("unchanged_toast") == [Begin, Relation, Insert, Commit, Begin, Update, Commit]
    assert _only("unchanged_toast", Insert).new == ("1", "0", body)
    update = _only("unchanged_toast", Update)
    assert update.old is None
    assert update.new == ("1", "1", UNCHANGED_TOAST)
    assert update.new[2] is not None


def test_binary_format_values_are_bytes() -> None:
    insert = _only("binary_insert", Insert)
    numeric_12_50 = struct.pack("!hhHh2h", 2, 0, 0, 2, 12, 5000)  # ndigits weight sign dscale
    assert insert.new == (
        struct.pack("!i", 4), b"bin", struct.pack("!i", -2), numeric_12_50, None,
    )  # fmt: skip


# --- every type, converted ---------------------------------------------------------------------

ALLTYPES_ROW_1 = {
    "id": 1,
    "c_int2": -32768,
    "c_int4": 2147483647,
    "c_int8": -9223372036854775808,
    "c_oid": 4294967295,
    "c_float4": 1.5,
    "c_float8": -0.000123456789,
    "c_numeric": "12345678901234567890.123456789012345678901234567890",
    "c_bool": True,
    "c_text": 'multi\nline "quoted" \\ back \u00fcn\u00efc\u00f8d\u00e9 \U0001f418',
    "c_varchar": "short",
    "c_bpchar": "ab   ",
    "c_name": "a_name",
    "c_char": "x",
    "c_ts": "2024-02-29T12:34:56.789",
    "c_tstz": "2024-01-01T21:34:05.123Z",  # written as 03:04:05.123+05:30
    "c_tstz_local": "2024-06-30T10:59:59.999999Z",  # written without zone in Pacific/Apia (+13)
    "c_date": "2024-02-29",
    "c_time": "23:59:59.5",
    "c_timetz": "12:00:00+05:30",
    "c_uuid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    # JSON as its exact text: json as written, jsonb as PostgreSQL normalised it.
    "c_json": '{"b": 1, "a": [true, null, 2.5]}',
    "c_jsonb": '{"k": "v", "n": [1, 2]}',
    "c_bytea": "3q2+7wD/",  # base64 of de ad be ef 00 ff
    "c_int4_arr": [1, 2, 3],
    "c_int8_arr": [[1, 2], [3, 4]],
    "c_text_arr": ["plain", "with space", "with,comma", 'with "quote"', "back\\slash", "",
                   "NULL", None, "{braces}"],
    "c_varchar_arr": ["a", "b"],
    "c_numeric_arr": ["1.10", "NaN", "-0.5"],
    "c_bool_arr": [True, False, None],
    "c_float8_arr": [1.5, "NaN", "Infinity", "-Infinity"],
    "c_uuid_arr": ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "00000000-0000-0000-0000-000000000000"],
    "c_jsonb_arr": ['{"a": 1}', '[1, "x"]', None],
    "c_tstz_arr": ["2024-01-02T03:04:05Z", "infinity"],
    "c_date_arr": ["2024-01-01", "infinity"],
}  # fmt: skip

ALLTYPES_ROW_2 = {
    "id": 2, "c_int2": 0, "c_int4": 0, "c_int8": 0, "c_oid": 0,
    "c_float4": "NaN", "c_float8": "Infinity", "c_numeric": "NaN", "c_bool": False,
    "c_text": "", "c_varchar": "", "c_bpchar": "     ", "c_name": "", "c_char": "",
    "c_ts": "infinity", "c_tstz": "-infinity",
    "c_tstz_local": "1900-01-01T00:00:00Z",  # sent with a local-mean-time offset
    "c_date": "0001-01-01 BC", "c_time": "00:00:00", "c_timetz": "00:00:00-03",
    "c_uuid": "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "c_json": "[]", "c_jsonb": '"just a string"', "c_bytea": "",
    "c_int4_arr": [[[1, 2]], [[3, 4]]], "c_int8_arr": [5, 6], "c_text_arr": [],
    "c_varchar_arr": ["", None], "c_numeric_arr": [], "c_bool_arr": [],
    "c_float8_arr": ["-Infinity", 0.0, -1.25e-10], "c_uuid_arr": [], "c_jsonb_arr": [],
    "c_tstz_arr": ["BC", "1900-01-01T00:00:00Z"],  # [0]: see the test
    "c_date_arr": [],
}  # fmt: skip


def _alltypes() -> tuple[Relation, list[Insert]]:
    relation = _only("alltypes", Relation)
    inserts = [m for m in _decoded("alltypes") if isinstance(m, Insert)]
    return relation, inserts


def test_alltypes_relation_column_types() -> None:
    relation, _ = _alltypes()
    types = {c.name: (c.type_oid, c.type_modifier) for c in relation.columns}
    assert types["c_varchar"] == (v.VARCHAR_OID, 20 + 4)
    assert types["c_bpchar"] == (v.BPCHAR_OID, 5 + 4)
    assert {name: oid for name, (oid, _) in types.items()} == {
        "id": v.INT4_OID, "c_int2": v.INT2_OID, "c_int4": v.INT4_OID, "c_int8": v.INT8_OID,
        "c_oid": v.OID_OID, "c_float4": v.FLOAT4_OID, "c_float8": v.FLOAT8_OID,
        "c_numeric": v.NUMERIC_OID, "c_bool": v.BOOL_OID, "c_text": v.TEXT_OID,
        "c_varchar": v.VARCHAR_OID, "c_bpchar": v.BPCHAR_OID, "c_name": v.NAME_OID,
        "c_char": v.CHAR_OID, "c_ts": v.TIMESTAMP_OID, "c_tstz": v.TIMESTAMPTZ_OID,
        "c_tstz_local": v.TIMESTAMPTZ_OID, "c_date": v.DATE_OID, "c_time": v.TIME_OID,
        "c_timetz": v.TIMETZ_OID, "c_uuid": v.UUID_OID, "c_json": v.JSON_OID,
        "c_jsonb": v.JSONB_OID, "c_bytea": v.BYTEA_OID, "c_int4_arr": v.INT4_ARRAY_OID,
        "c_int8_arr": v.INT8_ARRAY_OID, "c_text_arr": v.TEXT_ARRAY_OID,
        "c_varchar_arr": v.VARCHAR_ARRAY_OID, "c_numeric_arr": v.NUMERIC_ARRAY_OID,
        "c_bool_arr": v.BOOL_ARRAY_OID, "c_float8_arr": v.FLOAT8_ARRAY_OID,
        "c_uuid_arr": v.UUID_ARRAY_OID, "c_jsonb_arr": v.JSONB_ARRAY_OID,
        "c_tstz_arr": v.TIMESTAMPTZ_ARRAY_OID, "c_date_arr": v.DATE_ARRAY_OID,
    }  # fmt: skip


def test_alltypes_row_1_converts_to_what_was_written() -> None:
    relation, inserts = _alltypes()
    assert _row_dict(relation, inserts[0].new) == ALLTYPES_ROW_1


def test_alltypes_row_2_edge_values() -> None:
    relation, inserts = _alltypes()
    row = _row_dict(relation, inserts[1].new)
    # A BC timestamptz is passed through as sent, in the decoding session's zone (here local
    # mean time of Asia/Kolkata), whose exact offset depends on the tz database.
    bc = row["c_tstz_arr"][0]
    assert bc.startswith("0044-03-15 ") and bc.endswith(" BC")
    row["c_tstz_arr"][0] = "BC"
    assert row == ALLTYPES_ROW_2


def test_alltypes_row_3_is_all_null() -> None:
    relation, inserts = _alltypes()
    assert _row_dict(relation, inserts[2].new) == {
        c.name: (3 if c.name == "id" else None) for c in relation.columns
    }


# --- RelationCache, UNCHANGED_TOAST ---------------------------------------------------------


def test_relation_cache_unknown_oid_raises_a_clear_error() -> None:
    cache = RelationCache()
    cache.observe(_only("insert", Insert))  # ignored: not a Relation
    with pytest.raises(UnknownRelationError, match="no Relation message seen for relation oid 7"):
        cache.get(7)
    assert 7 not in cache
    assert issubclass(UnknownRelationError, PgoutputDecodeError)


def test_unchanged_toast_is_a_singleton_distinct_from_none() -> None:
    assert repr(UNCHANGED_TOAST) == "UNCHANGED_TOAST"
    assert UnchangedToast() is UNCHANGED_TOAST
    assert copy.deepcopy(UNCHANGED_TOAST) is UNCHANGED_TOAST
    assert pickle.loads(pickle.dumps(UNCHANGED_TOAST)) is UNCHANGED_TOAST
    assert UNCHANGED_TOAST is not None and UNCHANGED_TOAST != None  # noqa: E711


def test_messages_are_frozen() -> None:
    insert = _only("insert", Insert)
    with pytest.raises(AttributeError):
        insert.relation_oid = 1


def test_memoryview_and_bytearray_payloads() -> None:
    payload = bytes.fromhex(_rows("insert")[2]["hex"])
    expected = decode_message(payload)
    assert decode_message(memoryview(payload)) == expected
    assert decode_message(bytearray(payload)) == expected
    assert decode_message(memoryview(b"xx" + payload)[2:]) == expected


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty pgoutput payload"),
        (b"Z\x00\x00", "unknown pgoutput message type 'Z'"),
        (b"S\x00\x00\x00\x01\x01", "Stream Start \\(protocol 2\\)"),
        (b"B" + bytes(19), "'B' \\(0x42\\) message truncated"),
        (b"C" + bytes(26), "'C' \\(0x43\\) message has 1 unexpected trailing bytes at offset 26"),
        (b"I\x00\x00\x00\x01N\x00\x01x", "unknown tuple column kind 'x'"),
        (b"I\x00\x00\x00\x01Q\x00\x00", "expected tuple tag 'N' at offset 5"),
        (b"D\x00\x00\x00\x01N\x00\x00", "expected tuple tag 'K' or 'O' at offset 5"),
        (b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x05abc", "5 bytes needed at offset 13"),
        (b"I\x00\x00\x00\x01N\x00\x01t\xff\xff\xff\xffabc", "-1 bytes needed"),
        (b"Y\x00\x00\x00\x01public", "unterminated string starting at offset 5"),
        (b"T\x00\x00\x00\x02\x00\x00\x00\x00\x01", "8 bytes needed at offset 6"),
    ],
)
def test_bad_payloads_raise_decode_errors(payload: bytes, message: str) -> None:
    with pytest.raises(PgoutputDecodeError, match=message):
        decode_message(payload)


def test_column_bytes_that_are_not_utf8_become_replacement_characters() -> None:
    """A SQL_ASCII database sends its bytes unconverted: refusing them would stop capture on
    every restart, so each bad byte becomes U+FFFD (as Debezium's Java decoding) and is
    counted; valid UTF-8 around it, and in other columns, is kept."""
    take_replaced_values()
    bad, good = b"caf\xe9 " + "\u00e9 \U0001f600".encode(), "na\u00efve".encode()
    payload = b"I\x00\x00\x00\x01N\x00\x03" + b"".join(
        b"t" + struct.pack("!i", len(v)) + v for v in (bad, good, b"\xff\xfe"))
    msg = decode_message(payload)
    assert isinstance(msg, Insert)
    assert msg.new == ("caf\ufffd \u00e9 \U0001f600", "na\u00efve", "\ufffd\ufffd")
    assert take_replaced_values() == 2 and take_replaced_values() == 0
    # a count belongs to the message decoded last, even when that one failed part-way
    with pytest.raises(PgoutputDecodeError):
        decode_message(payload[:-1])
    decode_message(b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x01a")
    assert take_replaced_values() == 0


def test_name_bytes_that_are_not_utf8_become_replacement_characters() -> None:
    """A SQL_ASCII database's names (tables, columns, types, message prefixes) may hold any
    bytes too: refusing them stopped the stream at the same message after every restart."""
    relation = decode_message(b"R\x00\x00\x00\x07p\xffblic\x00caf\xe9\x00d\x00\x01"
                              b"\x01na\xefve\x00\x00\x00\x00\x17\xff\xff\xff\xff")
    assert isinstance(relation, Relation)
    assert (relation.namespace, relation.name) == ("p\ufffdblic", "caf\ufffd")
    assert [c.name for c in relation.columns] == ["na\ufffdve"]
    message = decode_message(b"M\x01" + b"\x00" * 8 + b"caf\xe9\x00\x00\x00\x00\x02hi")
    assert isinstance(message, Message)
    assert (message.prefix, message.content) == ("caf\ufffd", b"hi")
    assert take_replaced_values() == 0  # values only


@pytest.mark.parametrize("case", ALL_CASES)
def test_every_truncation_of_a_real_message_is_an_error(case: str) -> None:
    for row in _rows(case):
        payload = bytes.fromhex(row["hex"])
        for cut in range(len(payload)):
            with pytest.raises(PgoutputDecodeError):
                decode_message(payload[:cut])


@pytest.mark.parametrize("case", ALL_CASES)
def test_trailing_garbage_is_an_error(case: str) -> None:
    for row in _rows(case):
        with pytest.raises(PgoutputDecodeError, match="trailing"):
            decode_message(bytes.fromhex(row["hex"]) + b"\x00")


@given(st.binary(max_size=64))
def test_garbage_only_ever_raises_decode_errors(payload: bytes) -> None:
    with contextlib.suppress(PgoutputDecodeError):
        decode_message(payload)


@given(st.sampled_from(ALL_CASES).flatmap(lambda c: st.sampled_from(_rows(c))), st.data())
def test_corrupted_real_messages_only_ever_raise_decode_errors(
    row: dict[str, Any], data: st.DataObject
) -> None:
    payload = bytearray.fromhex(row["hex"])
    at = data.draw(st.integers(0, len(payload) - 1))
    payload[at] = data.draw(st.integers(0, 255))
    with contextlib.suppress(PgoutputDecodeError):
        decode_message(payload)


# --- property: an encoder written from the protocol spec, decoded back ------------------------

_VALUES = st.one_of(
    st.none(),
    st.just(UNCHANGED_TOAST),
    st.text(max_size=20),
    st.binary(max_size=20),
)


def _encode_tuple(values: list[Any]) -> bytes:
    out = [struct.pack("!h", len(values))]
    for value in values:
        if value is None:
            out.append(b"n")
        elif value is UNCHANGED_TOAST:
            out.append(b"u")
        else:
            raw, kind = (value, b"b") if isinstance(value, bytes) else (value.encode(), b"t")
            out.append(kind + struct.pack("!i", len(raw)) + raw)
    return b"".join(out)


@given(st.integers(0, 2**32 - 1), st.lists(_VALUES, max_size=12),
       st.none() | st.tuples(st.sampled_from("KO"), st.lists(_VALUES, max_size=12)))  # fmt: skip
def test_update_encoding_roundtrip(
    oid: int, new: list[Any], old: tuple[str, list[Any]] | None
) -> None:
    payload = b"U" + struct.pack("!I", oid)
    if old is not None:
        payload += old[0].encode() + _encode_tuple(old[1])
    payload += b"N" + _encode_tuple(new)
    assert decode_message(payload) == Update(
        oid,
        None if old is None else tuple(old[1]),
        None if old is None else old[0],
        tuple(new),
    )
