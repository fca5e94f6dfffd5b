"""bench/compat_diff.py: pairing two tools' records and listing where they differ."""

from __future__ import annotations

import json
from typing import Any

from bench.compat_diff import collapse, compare, record

T = "s.t"


def rec(op: str, key: int | None, after: Any = None, before: Any = None, *,
        prefix: str = "p", seq: str = '["1","2"]', ts_ms: Any = 5, partition: int = 0,
        raw_after: str | None = None) -> Any:
    source = {"name": prefix, "sequence": seq, "lsn": 2}
    value = {"before": before, "after": after, "source": source, "op": op, "ts_ms": ts_ms}
    text = json.dumps(value)
    if raw_after is not None:  # JSON number text json.dumps would not write
        text = text.replace('"after": "RAW"', f'"after": {raw_after}')
    key_bytes = None if key is None else json.dumps({"id": key}).encode()
    return record(T, partition, key_bytes, text.encode())


def test_identical_records_have_no_difference() -> None:
    a = [rec("c", 1, {"id": 1, "x": "a"})]
    b = [rec("c", 1, {"id": 1, "x": "a"}, prefix="q", ts_ms=99)]
    out = compare(a, b, ("p", "q"))
    assert out.pairs == 1
    assert not out.differences  # topic prefix and processing time differ by construction


def test_numbers_are_compared_as_written() -> None:
    a = [rec("c", 1, "RAW", raw_after='{"n": 1e400, "f": 1.0}')]
    b = [rec("c", 1, "RAW", raw_after='{"n": 1e400, "f": 1}')]
    out = compare(a, b, ("p", "p"))
    assert dict(out.differences) == {(T, "after.f", "1.0", "1"): 1}


def test_pairs_by_key_op_and_ordinal() -> None:
    a = [rec("u", 1, {"v": 1}), rec("u", 2, {"v": 1}), rec("u", 1, {"v": 2})]
    b = [rec("u", 2, {"v": 1}), rec("u", 1, {"v": 1}), rec("u", 1, {"v": 3})]
    out = compare(a, b, ("p", "p"))
    assert dict(out.differences) == {(T, "after.v", "2", "3"): 1}


def test_missing_records_and_counts() -> None:
    a = [rec("d", 1, before={"id": 1}), record(T, 0, b'{"id": 1}', None)]
    b = [rec("d", 1, before={"id": 1})]
    out = compare(a, b, ("p", "p"))
    assert dict(out.differences) == {(T, "(record) op tombstone", "present", "missing"): 1}
    assert out.counts == {(T, "d"): [1, 1], (T, "tombstone"): [1, 0]}


def test_sequence_elements_and_absent_fields() -> None:
    a = [rec("c", 1, {"id": 1, "x": 1}, seq='["10","20"]')]
    b = [rec("c", 1, {"id": 1}, seq='["11","20"]')]
    out = compare(a, b, ("p", "p"))
    assert set(out.differences) == {(T, "source.sequence[0]", '"10"', '"11"'),
                                    (T, "after.x", "1", "(absent)")}


def test_partition_of_keyless_records_is_not_compared() -> None:
    a = [rec("t", None, partition=0), rec("c", 1, {"id": 1}, partition=0)]
    b = [rec("t", None, partition=2), rec("c", 1, {"id": 1}, partition=1)]
    out = compare(a, b, ("p", "p"))
    assert dict(out.differences) == {(T, "(partition)", "0", "1"): 1}


def test_collapse_merges_images_and_many_values() -> None:
    a = [rec("u", i, {"b": True}, before={"b": True}, seq=f'["{i}","1"]') for i in range(5)]
    b = [rec("u", i, {"b": "1"}, before={"b": "1"}, seq=f'["{i + 1}","1"]') for i in range(5)]
    rows = collapse(compare(a, b, ("p", "p")))
    assert (T, "b", "true", '"1"', "10") in rows  # before and after of 5 records
    assert ("every table", "source.sequence[0]", '"0"', '"1"', "5 (5 distinct, e.g.)") in rows


def test_transaction_records_pair_by_xid_whatever_the_lsn_in_their_id() -> None:
    def tx(tx_id: str, count: int) -> Any:
        value = {"status": "END", "id": tx_id, "event_count": count, "ts_ms": 1}
        return record("transaction", 0, json.dumps({"id": tx_id}).encode(),
                      json.dumps(value).encode())

    out = compare([tx("7:100", 3), tx("8:200", 1)], [tx("8:250", 1), tx("7:150", 2)],
                  ("p", "p"))
    assert out.pairs == 2
    assert out.differences[("transaction", "event_count", "3", "2")] == 1
    assert ("transaction", "id", '"8:200"', '"8:250"') in out.differences


def test_data_collections_are_compared_in_name_order() -> None:
    def end(*names: str) -> Any:
        value = {"status": "END", "id": "7:1", "event_count": len(names), "ts_ms": 1,
                 "data_collections": [{"data_collection": n, "event_count": 1}
                                      for n in names]}
        return record("transaction", 0, b'{"id": "7:1"}', json.dumps(value).encode())

    assert not compare([end("s.b", "s.a")], [end("s.a", "s.b")], ("p", "p")).differences
