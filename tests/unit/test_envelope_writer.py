"""The capture's fast path writes exactly the bytes of the readable path."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.events import encode_key, encode_value
from pipeline.sources.postgres.envelope import (
    ChangeBuilder,
    EnvelopeWriter,
    TableShape,
    TransactionContext,
)
from pipeline.sources.postgres.pgoutput import (
    UNCHANGED_TOAST,
    Column,
    Delete,
    Insert,
    Relation,
    Update,
)
from pipeline.sources.postgres.values import BUILTIN_TYPE_OIDS

REL = Relation(
    oid=16400, namespace="sales", name='or"ders', replica_identity="d",
    columns=(Column(True, "id", BUILTIN_TYPE_OIDS["int4"], -1),
             Column(False, "note", BUILTIN_TYPE_OIDS["text"], -1),
             Column(False, "total", BUILTIN_TYPE_OIDS["numeric"], -1),
             Column(False, "paid", BUILTIN_TYPE_OIDS["bool"], -1)),
)
SHAPE = TableShape.from_relation(REL, ("id",))
texts = st.one_of(st.none(), st.text(max_size=20))


def _both(msg: object, txn: TransactionContext, lsn: int) -> None:
    builder = ChangeBuilder('srv "x"', "shop")
    writer = EnvelopeWriter('srv "x"', "shop")
    writer.begin(txn)
    slow = [(e.op, encode_key(e), encode_value(e))
            for e in builder.events(msg, SHAPE, txn, lsn, 1234)]  # type: ignore[arg-type]
    fast = list(writer.encode(msg, SHAPE, lsn, b"1234"))  # type: ignore[arg-type]
    assert fast == slow
    if isinstance(msg, Insert):
        assert [("c", *writer.insert(msg, SHAPE, lsn, b"1234"))] == slow


@given(st.integers(0, 2**31 - 1), texts, st.integers(1, 2**62), st.one_of(st.none(),
       st.integers(1, 2**62)), st.integers(0, 2**40))
def test_insert_update_delete_bytes_match(
    key: int, note: str | None, lsn: int, last: int | None, xid: int
) -> None:
    txn = TransactionContext(xid=xid, commit_ts_us=1_700_000_000_123_456, last_commit_lsn=last)
    new = (str(key), note, "12.50", "t")
    _both(Insert(SHAPE.oid, new), txn, lsn)
    _both(Update(SHAPE.oid, None, None, new), txn, lsn)
    _both(Update(SHAPE.oid, (str(key), None, None, None), "K", new), txn, lsn)
    _both(Update(SHAPE.oid, (str(key + 1), None, None, None), "K", new), txn, lsn)  # key moved
    _both(Update(SHAPE.oid, new, "O", (str(key), UNCHANGED_TOAST, "1", "f")), txn, lsn)
    _both(Update(SHAPE.oid, (str(key), None, None, None), "K",
                 (UNCHANGED_TOAST, note, "1", "f")), txn, lsn)  # a key stored out of line
    _both(Delete(SHAPE.oid, (str(key), None, None, None), "K"), txn, lsn)


def _insert_payload(values: list[str | None | object]) -> bytes:
    """An Insert message as PostgreSQL writes it (text format)."""
    import struct

    parts = [b"I", struct.pack("!I", SHAPE.oid), b"N", struct.pack("!h", len(values))]
    for value in values:
        if value is None:
            parts.append(b"n")
        elif value is UNCHANGED_TOAST:
            parts.append(b"u")
        else:
            data = str(value).encode()
            parts.append(b"t" + struct.pack("!i", len(data)) + data)
    return b"".join(parts)


@given(st.integers(-(2**31), 2**31 - 1), texts, st.sampled_from(["0", "12.50", "-1e-3", None]),
       st.sampled_from(["t", "f", None]))
def test_insert_fast_path_equals_the_decoder(
    key: int, note: str | None, total: str | None, paid: str | None
) -> None:
    from pipeline.events import UNAVAILABLE_VALUE
    from pipeline.sources.postgres.pgoutput import decode_message, insert_relation_oid, insert_row

    payload = _insert_payload([str(key), note, total, paid])
    assert insert_relation_oid(payload) == SHAPE.oid
    fast = insert_row(payload, SHAPE.names, SHAPE.converters, UNAVAILABLE_VALUE)
    msg = decode_message(payload)
    assert fast == SHAPE.row(msg.new)  # type: ignore[union-attr]


def test_insert_fast_path_refuses_what_it_does_not_expect() -> None:
    import pytest

    from pipeline.sources.postgres.pgoutput import (
        PgoutputDecodeError,
        insert_relation_oid,
        insert_row,
    )

    good = _insert_payload(["1", "a", "2", "t"])
    for bad in (good[:-1], good + b"x", _insert_payload(["1", "a", "2"]),
                good.replace(b"N", b"K", 1)):
        with pytest.raises(PgoutputDecodeError):
            insert_row(bad, SHAPE.names, SHAPE.converters, None)
    assert insert_relation_oid(b"U" + good[1:]) is None


@given(st.integers(-(2**63), 2**63 - 1), st.one_of(st.none(), st.text(max_size=8)))
def test_key_json_is_the_key_dict_encoded(key: int, other: str | None) -> None:
    import orjson

    from pipeline.sources.postgres.envelope import TableShape

    row = {"id": key, "note": other, "total": "1.00"}
    one = TableShape.from_relation(REL, ("id",))
    two = TableShape.from_relation(REL, ("id", "note"))
    for shape in (one, two):
        assert shape.key_json(row) == orjson.dumps(shape.key(row))
    assert one.key_json({}) == b'{"id":null}'


def test_insert_fast_path_leaves_a_refused_value_to_the_general_path() -> None:
    import pytest

    from pipeline.sources.postgres.pgoutput import PgoutputDecodeError, decode_message, insert_row

    precise = TableShape.from_relation(REL, ("id",), decimal_mode="precise")
    payload = _insert_payload(["1", "a", "NaN", "t"])
    with pytest.raises(PgoutputDecodeError, match="converter"):
        insert_row(payload, precise.names, precise.converters, None)
    msg = decode_message(payload)
    assert precise.row(msg.new)["total"] == "NaN"  # type: ignore[union-attr]


@given(st.integers(-(2**31), 2**31 - 1), texts, st.integers(1, 2**62), st.booleans())
def test_the_emitter_appends_the_records_and_counts_of_the_general_path(
    key: int, note: str | None, lsn: int, tombstones: bool
) -> None:
    from pipeline.capture.source import ANY_PARTITION
    from pipeline.sources.postgres.envelope import RecordEmitter
    from pipeline.sources.postgres.pgoutput import decode_message

    txn = TransactionContext(xid=7, commit_ts_us=1_700_000_000_123_456, last_commit_lsn=None)
    writer = EnvelopeWriter('srv "x"', "shop")
    writer.begin(txn)
    topic = "srv.sales.orders"
    counts: dict[tuple[int, str], int] = {}
    emitter = RecordEmitter(writer, {SHAPE.oid: SHAPE}, {SHAPE.oid: topic}, counts, tombstones)
    out: list[object] = []
    payload = _insert_payload([str(key), note, "12.50", "t"])
    assert emitter.insert(payload, lsn, out, b"1234")
    msg = decode_message(payload)
    assert out == [(topic, *writer.insert(msg, SHAPE, lsn, b"1234"),  # type: ignore[arg-type]
                    ANY_PARTITION)]
    new = (str(key), note, "1", "f")
    changes = [Update(SHAPE.oid, (str(key + 1), None, None, None), "K", new),  # key moved
               Delete(SHAPE.oid, (str(key), None, None, None), "K")]
    for change in changes:
        out.clear()
        emitter.change(change, SHAPE, lsn, out, b"1234")
        expected: list[object] = []
        for op, k, v in writer.encode(change, SHAPE, lsn, b"1234"):
            expected.append((topic, k, v, ANY_PARTITION))
            if op == "d" and tombstones:
                expected.append((topic, k, None, ANY_PARTITION))
        assert out == expected
    assert counts == {(SHAPE.oid, "c"): 2, (SHAPE.oid, "d"): 2}
    # not an Insert, an unknown table, a value the fast decoder does not expect: nothing
    # appended, the general path decides
    out.clear()
    other = _insert_payload(["1", "a", "2", "t"]).replace(
        SHAPE.oid.to_bytes(4, "big"), (SHAPE.oid + 1).to_bytes(4, "big"), 1)
    for refused in (b"U" + payload[1:], other, payload[:-1]):
        assert not emitter.insert(refused, lsn, out, b"1234")
    assert out == [] and counts == {(SHAPE.oid, "c"): 2, (SHAPE.oid, "d"): 2}


@given(st.integers(-(2**31), 2**31 - 1), texts, st.integers(1, 2**62))
def test_the_emitter_takes_inserts_updates_and_deletes_as_decoded(
    key: int, note: str | None, lsn: int
) -> None:
    from pipeline.sources.postgres.envelope import RecordEmitter
    from pipeline.sources.postgres.pgoutput import decode_message

    txn = TransactionContext(xid=7, commit_ts_us=1_700_000_000_123_456, last_commit_lsn=None)
    writer = EnvelopeWriter('srv "x"', "shop")
    writer.begin(txn)
    emitter = RecordEmitter(writer, {SHAPE.oid: SHAPE}, {SHAPE.oid: "t"}, {}, True)
    inserted = _insert_payload([str(key), note, "12.50", "t"])
    updated = b"U" + inserted[1:]
    deleted = b"D" + _insert_payload([str(key), None, None, None])[1:].replace(b"N", b"K", 1)
    for payload in (inserted, updated, deleted):
        taken: list[object] = []
        assert emitter.take(payload, lsn, taken, b"1")
        decoded: list[object] = []
        msg = decode_message(payload)
        emitter.change(msg, SHAPE, lsn, decoded, b"1")  # type: ignore[arg-type]
        assert taken == decoded and taken
    # left to the general path: another kind, a value that is not UTF-8, a short payload
    not_utf8 = b"U" + _insert_payload([str(key), "x", "1", "t"])[1:].replace(b"x", b"\xff")
    for payload in (b"B" + inserted[1:], not_utf8, updated[:-1], b""):
        out: list[object] = []
        assert not emitter.take(payload, lsn, out, b"1") and out == []
