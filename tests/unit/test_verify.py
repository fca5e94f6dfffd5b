"""The comparison behind `cdc verify`: hashes, drift kinds, differing columns, re-checks."""

from __future__ import annotations

from pipeline.verify.command import summary
from pipeline.verify.compare import (
    DIFFERING,
    EXTRA,
    MISSING,
    Drift,
    TableResult,
    compare_chunk,
    differing_columns,
    extras,
    row_hash,
)
from pipeline.verify.index import _seconds
from pipeline.verify.run import Throttle, judge


def _row(i: int, name: str = "a", price: str = "1.50") -> tuple[dict, dict, tuple]:
    return {"id": i}, {"id": i, "name": name, "price": price}, (str(i),)


def test_a_row_hashes_the_same_in_any_column_order_and_as_json_gives_it_back() -> None:
    assert row_hash({"id": 1, "name": "a"}) == row_hash({"name": "a", "id": 1})
    assert row_hash({"id": 1, "x": (1, 2)}) == row_hash({"id": 1, "x": [1, 2]})
    assert row_hash({"id": 1, "name": "a"}) != row_hash({"id": 1, "name": "b"})
    # a column added without a value: null in the row, absent from older documents (to
    # Elasticsearch both are "no value"); every row of the table was reported differing
    assert row_hash({"id": 1}) == row_hash({"id": 1, "name": None})


def test_differing_columns_names_changed_added_and_absent_columns() -> None:
    assert differing_columns({"id": 1, "a": 1, "b": 2, "c": 3},
                             {"id": 1, "a": 1, "b": 5, "d": 4}) == ["b", "c", "d"]
    assert differing_columns({"id": 1, "n": None}, {"id": 1}) == []
    assert differing_columns({"id": 1, "n": 0}, {"id": 1}) == ["n"]
    assert differing_columns({"id": 1}, {"id": 1, "gone": None}) == []
    assert differing_columns({"id": 1, "f": 1.5}, {"id": 1, "f": 1.5}) == []


def test_a_chunk_reports_missing_and_differing_documents_exactly() -> None:
    rows = {"1": _row(1), "2": _row(2), "3": _row(3), "10": _row(10)}
    documents = {"1": {"id": 1, "name": "a", "price": "1.50"},
                 "2": None,
                 "3": {"id": 3, "name": "changed", "price": "1.50"},
                 "10": {"price": "1.50", "name": "a", "id": 10}}
    drifts = compare_chunk(rows, documents)
    assert drifts == [Drift(MISSING, "2", {"id": 2}),
                      Drift(DIFFERING, "3", {"id": 3}, ("name",))]
    assert drifts[0].text_key == ("2",)


def test_extras_are_the_ids_no_row_produces() -> None:
    documents = {"1": {"id": 1}, "99": {"id": 99}, "x": {"id": 5}}
    found = ["1", "5"]  # the row of key 5 exists, but its id is "5", not "x"
    assert [d.doc_id for d in extras(documents, found)] == ["99", "x"]
    assert all(d.kind == EXTRA for d in extras(documents, found))


def test_a_recheck_judges_the_newest_versions_of_both_sides() -> None:
    doc = {"_seq_no": 7, "_primary_term": 1, "_source": {"id": 1, "name": "a",
                                                          "price": "1.50"}}
    assert judge("1", _row(1), doc) is None  # caught up meanwhile
    assert judge("1", None, None) is None  # deleted on both sides meanwhile
    missing = judge("1", _row(1), None)
    assert missing is not None and missing.kind == MISSING and missing.text_key == ("1",)
    differing = judge("1", _row(1, name="b"), doc)
    assert differing is not None and differing.kind == DIFFERING
    assert differing.columns == ("name",) and differing.seen == (7, 1)
    extra = judge("1", None, doc)
    assert extra is not None and extra.kind == EXTRA and extra.seen == (7, 1)


def test_the_throttle_holds_the_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    throttle = Throttle(100.0, lambda: now[0], sleep)
    throttle.passed(50)
    assert slept == [0.5]
    now[0] += 2.0  # slow answers: no sleep needed
    throttle.passed(50)
    assert slept == [0.5]
    Throttle(None, lambda: 0.0, sleep).passed(10_000)
    assert slept == [0.5]


def test_gc_deletes_values_are_read_in_seconds() -> None:
    assert _seconds("60s") == 60 and _seconds("1m") == 60 and _seconds("500ms") == 0.5
    assert _seconds("1.5s") == 1.5


def test_the_summary_counts_each_kind_and_lists_the_drifts() -> None:
    clean = TableResult("s.a", "cdc.s.a", rows=3, documents=3)
    drifted = TableResult("s.b", "cdc.s.b", rows=2, documents=2, drifts=[
        Drift(MISSING, "1", {"id": 1}), Drift(DIFFERING, "2", {"id": 2}, ("name", "qty")),
        Drift(EXTRA, "9", {"id": 9})], settled=1)
    text = summary([clean, drifted])
    lines = text.splitlines()
    assert lines[0].split() == ["table", "rows", "documents", "missing", "extra",
                                "differing", "settled", "seconds"]
    assert lines[1].split()[:7] == ["s.a", "3", "3", "0", "0", "0", "0"]
    assert lines[2].split()[:7] == ["s.b", "2", "2", "1", "1", "1", "1"]
    assert "s.b  differing  id=2  columns: name, qty" in text
    assert lines[-1] == "verdict: 3 document(s) drifted"
    assert summary([clean]).endswith("verdict: index equals table")
    report = drifted.to_json()
    assert report["missing"] == 1 and report["drifts"][1] == {
        "kind": "differing", "id": "2", "key": {"id": 2}, "columns": ["name", "qty"]}
