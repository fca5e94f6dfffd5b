"""Signals: asking a running capture to backfill, pause, resume or stop, whatever the source.

Debezium's signal vocabulary, so an application written for Debezium keeps working:

* ``execute-snapshot`` with ``{"data-collections": ["schema.table", ...], "type":
  "incremental", "additional-conditions": [{"data-collection": "schema.table", "filter":
  "<SQL condition>"}]}`` (we also read ``chunk-size``);
* ``stop-snapshot`` (``data-collections`` optional: all when absent), ``pause-snapshot``,
  ``resume-snapshot``.

How a signal reaches capture is the source's (PostgreSQL: :mod:`pipeline.sources.postgres.
signals`); what it says is here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

KINDS = ("execute-snapshot", "stop-snapshot", "pause-snapshot", "resume-snapshot")


class SignalError(ValueError):
    """A signal capture cannot act on (logged and counted; capture goes on)."""


@dataclass(frozen=True)
class Signal:
    kind: str
    tables: tuple[str, ...] = ()
    #: Per table: a SQL condition on its rows (Debezium's additional-conditions).
    conditions: dict[str, str] = field(default_factory=dict)
    chunk_size: int | None = None
    id: str = ""

    def to_json(self) -> bytes:
        data: dict[str, Any] = {"data-collections": list(self.tables), "type": "incremental"}
        if self.conditions:
            data["additional-conditions"] = [
                {"data-collection": t, "filter": f} for t, f in self.conditions.items()]
        if self.chunk_size is not None:
            data["chunk-size"] = self.chunk_size
        return orjson.dumps({"id": self.id or str(uuid.uuid4()), "type": self.kind,
                             "data": data})


def parse(kind: str, data: Any, signal_id: str = "") -> Signal:
    """A signal from its type and data (a JSON text or already parsed)."""
    if kind not in KINDS:
        raise SignalError(f"unknown signal type '{kind}' (known: {', '.join(KINDS)})")
    if isinstance(data, str | bytes):
        try:
            data = orjson.loads(data) if data else {}
        except orjson.JSONDecodeError as exc:
            raise SignalError(f"{kind} signal data is not JSON: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SignalError(f"{kind} signal data must be a JSON object")
    tables = data.get("data-collections") or []
    if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
        raise SignalError(f"{kind}: data-collections must be a list of 'schema.table' names")
    if kind == "execute-snapshot":
        if not tables:
            raise SignalError("execute-snapshot names no table (data-collections)")
        mode = data.get("type", "incremental")
        if str(mode).lower() != "incremental":
            raise SignalError(f"execute-snapshot type '{mode}' is not supported: only "
                              "'incremental' (reads chunks while the stream goes on)")
    conditions: dict[str, str] = {}
    for entry in data.get("additional-conditions") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("filter"), str):
            raise SignalError("additional-conditions entries must be "
                              '{"data-collection": "schema.table", "filter": "<condition>"}')
        problem = filter_problem(entry["filter"])
        if problem is not None:
            raise SignalError(f"additional-conditions filter {entry['filter']!r}: {problem}")
        table = entry.get("data-collection")
        for name in ([table] if isinstance(table, str) else tables):
            conditions[name] = entry["filter"]
    chunk_size = data.get("chunk-size")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise SignalError("chunk-size must be a positive integer")
    return Signal(kind, tuple(tables), conditions, chunk_size, signal_id)


def filter_problem(text: str) -> str | None:
    """Why ``text`` is not one SQL condition that stays one inside the parentheses a chunk's
    query puts it in (``... AND (<filter>)``), or None. ``id > 3) OR (true`` is valid SQL
    there, but would read every row of every chunk again: a backfill that never ends.

    Quoted text (``'...'``, ``"..."``, `` `...` ``) is skipped, read both as MariaDB reads
    it (a backslash escapes the next character) and as PostgreSQL does (it does not): a
    filter must be one condition either way. Comments (``--``, ``/*``, MariaDB's ``#``),
    ``;`` and dollar quoting (``$$``) are refused: the parentheses inside them could not be
    counted for both servers."""
    if not text.strip():
        return "it is empty"
    for escapes in (True, False):
        problem = _scan(text, escapes)
        if problem is not None:
            return problem
    return None


def _scan(text: str, escapes: bool) -> str | None:
    depth = 0
    i = 0
    while i < len(text):
        c = text[i]
        if c in "'\"`":
            end = _closing(text, i, escapes)
            if end < 0:
                return f"its {c} quote is not closed (read with and without backslash escapes)"
            i = end + 1
            continue
        if text.startswith(("--", "/*", "#"), i):
            return "it holds a comment"
        if c == "$":
            return "it holds a '$' (dollar quoting cannot be checked): write the text in '...'"
        if c == ";":
            return "it holds a ';': give one condition, not statements"
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                return "a ')' closes more than it opens: give one condition"
        i += 1
    if depth:
        return "a '(' is not closed"
    return None


def _closing(text: str, start: int, escapes: bool) -> int:
    """Where the quote opened at ``start`` closes (a doubled quote stays inside; with
    ``escapes``, so does a backslashed one), or -1."""
    quote = text[start]
    i = start + 1
    while i < len(text):
        if escapes and text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            if text[i + 1:i + 2] == quote:
                i += 2
                continue
            return i
        i += 1
    return -1
