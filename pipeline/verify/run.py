"""Verifying one table against its index, chunk by chunk.

1. Rows in primary-key chunks (``TableRows.chunk``); for each chunk the documents of exactly
   those ids (``_mget``): missing and differing documents.
2. Every id of the index in pages (a point in time): each page's keys, read from the
   documents' key columns and turned back into PostgreSQL's text (:mod:`.keys`), are looked
   up in the table (``WHERE key IN (...)``); an id no row produces is an extra document. A
   document whose key cannot be turned back is counted as unchecked, never as extra.
3. Each suspect is read again on both sides after a short delay: a row changed while
   verifying has reached its document by then, and is not drift.

Memory holds one chunk, one page and the suspects; the database sees short key-range
SELECTs, at most ``rate`` rows a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from pipeline.verify.compare import (
    DIFFERING,
    EXTRA,
    MISSING,
    DbRow,
    Drift,
    TableResult,
    compare_chunk,
    differing_columns,
    extras,
    row_hash,
)
from pipeline.verify.database import Rows, TableRows
from pipeline.verify.index import Document, SearchIndex
from pipeline.verify.keys import NOT_A_ROW


@dataclass(frozen=True)
class Options:
    chunk_size: int = 1000
    #: Rows (and document ids) per second at most; None: as fast as both sides answer.
    rate: float | None = None
    #: Seconds before suspects are read again.
    recheck_delay_s: float = 2.0


class Throttle:
    """Sleeps so that no more than ``rate`` items a second pass."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate, self.clock, self.sleep = rate, clock, sleep
        self.start = clock()
        self.items = 0

    def passed(self, items: int) -> None:
        self.items += items
        if self.rate:
            ahead = self.items / self.rate - (self.clock() - self.start)
            if ahead > 0:
                self.sleep(ahead)


def _sources(found: dict[str, Document | None]) -> dict[str, dict[str, Any] | None]:
    return {i: (d.get("_source") or {}) if d is not None else None for i, d in found.items()}


def verify_table(db: TableRows, es: SearchIndex, index: str, options: Options,
                 progress: Callable[[int], None] = lambda n: None) -> TableResult:
    started = time.monotonic()
    result = TableResult(db.table, index)
    result.documents = es.check(index, db.table)
    throttle = Throttle(options.rate)
    suspects: dict[str, Drift] = {}
    after = None
    while True:
        rows, after = db.chunk(after, options.chunk_size)
        found = _sources(es.documents(index, list(rows)))
        for drift in compare_chunk(rows, found):
            suspects[drift.doc_id] = drift
        result.rows += len(rows)
        progress(len(rows))
        throttle.passed(len(rows))
        if after is None:
            break
    for page in es.ids(index, db.key_names, options.chunk_size):
        keyed: dict[str, dict[str, Any]] = {}
        texts: list[list[str]] = []
        for doc_id, source in page.items():
            key = db.keys.of(source)
            shown = {name: source.get(name) for name in db.key_names}
            if key == NOT_A_ROW:
                suspects.setdefault(doc_id, Drift(EXTRA, doc_id, shown))
            elif key is None:
                result.unchecked += 1
            else:
                keyed[doc_id] = shown
                texts.append(list(key))
        for drift in extras(keyed, db.by_keys(texts)):
            suspects.setdefault(drift.doc_id, drift)
        progress(len(page))
        throttle.passed(len(page))
    if suspects:
        time.sleep(options.recheck_delay_s)
        result.drifts = recheck(db, es, index, list(suspects.values()), options.chunk_size)
        result.settled = len(suspects) - len(result.drifts)
    if result.unchecked:
        result.unchecked_because = db.keys.unchecked_because or "their key values"
    result.seconds = time.monotonic() - started
    return result


def recheck(db: TableRows, es: SearchIndex, index: str, suspects: list[Drift],
            batch: int) -> list[Drift]:
    """Read each suspect's row and document again; the drifts that remain."""
    remaining: list[Drift] = []
    for start in range(0, len(suspects), batch):
        part = suspects[start:start + batch]
        keys = []
        for drift in part:
            if drift.text_key is not None:
                keys.append(list(drift.text_key))
            elif isinstance(key := db.keys.of(drift.key), list):
                keys.append(key)
        rows: Rows = db.by_keys(keys)
        documents = es.documents(index, [d.doc_id for d in part])
        for drift in part:
            now = judge(drift.doc_id, rows.get(drift.doc_id), documents.get(drift.doc_id))
            if now is not None:
                remaining.append(now)
    return remaining


def judge(doc_id: str, row: DbRow | None, document: Document | None) -> Drift | None:
    """The drift one id shows now (None: row and document agree, or neither exists)."""
    seen = None if document is None else (int(document["_seq_no"]),
                                          int(document["_primary_term"]))
    source = None if document is None else (document.get("_source") or {})
    if row is None:
        return None if source is None else replace(
            Drift(EXTRA, doc_id, dict(source)), seen=seen)
    key, values, text_key = row
    if source is None:
        return Drift(MISSING, doc_id, key, text_key=text_key)
    if row_hash(values) == row_hash(source):
        return None
    return Drift(DIFFERING, doc_id, key, tuple(differing_columns(values, source)),
                 text_key=text_key, seen=seen)
