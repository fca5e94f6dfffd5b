"""Comparing a table's rows with its index's documents: pure functions, no I/O.

A row is compared as the sink stores it: the values capture publishes (``TableShape.row``),
through JSON (what Kafka carries and Elasticsearch keeps in ``_source``). Equal rows have
equal hashes; for rows that differ, the columns that differ are named.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

Row = Mapping[str, Any]
#: A row as read from the table: its key as published, its values as published, its key
#: as PostgreSQL prints it.
DbRow = tuple[dict[str, Any], dict[str, Any], tuple[Any, ...]]

MISSING = "missing"  # a row with no document
EXTRA = "extra"  # a document with no row
DIFFERING = "differing"  # both, with other values


def canonical(row: Row) -> dict[str, Any]:
    """``row`` as JSON gives it back (what a sink reads from ``_source``)."""
    return dict(orjson.loads(orjson.dumps(dict(row))))


def _compared(row: Row) -> dict[str, Any]:
    """What is compared of a row or document: its non-null fields. A column added with
    no value (``ADD COLUMN note text``) is null in the row and in documents written since,
    and absent from documents written before: the same value, not a difference."""
    return {k: v for k, v in canonical(row).items() if v is not None}


def row_hash(row: Row) -> str:
    """A hash of a row's values, independent of column order (a null field is absent)."""
    return hashlib.sha256(orjson.dumps(_compared(row), option=orjson.OPT_SORT_KEYS)).hexdigest()


def differing_columns(row: Row, document: Row) -> list[str]:
    """The columns whose value differs (a non-null value one side lacks too), sorted."""
    a, b = _compared(row), _compared(document)
    absent = object()
    return sorted(c for c in a.keys() | b.keys() if a.get(c, absent) != b.get(c, absent))


@dataclass(frozen=True)
class Drift:
    """One document that does not match its row."""

    kind: str  # MISSING, EXTRA or DIFFERING
    doc_id: str
    key: dict[str, Any]
    columns: tuple[str, ...] = ()
    #: The key as PostgreSQL prints it (rows read from the table), for a repair's filter.
    text_key: tuple[Any, ...] | None = field(default=None, compare=False)
    #: ``(_seq_no, _primary_term)`` of the document as last read, for a conditional delete.
    seen: tuple[int, int] | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "id": self.doc_id, "key": self.key}
        if self.columns:
            out["columns"] = list(self.columns)
        return out


def compare_chunk(rows: Mapping[str, DbRow],
                  documents: Mapping[str, Row | None]) -> list[Drift]:
    """Rows (document id -> (key, row, text key)) against the documents of the same ids (None: not
    found): a drift per row whose document is missing or holds other values."""
    drifts = []
    for doc_id, (key, row, text_key) in rows.items():
        document = documents.get(doc_id)
        if document is None:
            drifts.append(Drift(MISSING, doc_id, key, text_key=text_key))
        elif row_hash(row) != row_hash(document):
            drifts.append(Drift(DIFFERING, doc_id, key,
                                tuple(differing_columns(row, document)), text_key=text_key))
    return drifts


def extras(documents: Mapping[str, dict[str, Any]], found: Iterable[str]) -> list[Drift]:
    """Documents (id -> key read from it) whose id no row of the table produces."""
    present = set(found)
    return [Drift(EXTRA, doc_id, key) for doc_id, key in documents.items()
            if doc_id not in present]


@dataclass
class TableResult:
    """What verifying one table found."""

    table: str
    index: str
    rows: int = 0
    documents: int = 0
    drifts: list[Drift] = field(default_factory=list)
    #: Keys that differed at first and matched when read again (changed while verifying).
    settled: int = 0
    #: Documents whose key does not say which row they are (never reported as extra).
    unchecked: int = 0
    unchecked_because: str = ""
    seconds: float = 0.0

    def count(self, kind: str) -> int:
        return sum(1 for d in self.drifts if d.kind == kind)

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "index": self.index, "rows": self.rows,
                "documents": self.documents, "missing": self.count(MISSING),
                "extra": self.count(EXTRA), "differing": self.count(DIFFERING),
                "settled": self.settled, "unchecked": self.unchecked,
                "seconds": round(self.seconds, 3),
                "drifts": [d.to_json() for d in self.drifts]}
