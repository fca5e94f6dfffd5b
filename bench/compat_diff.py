"""Pair the records two CDC tools wrote for the same WAL and list where they differ (pure
logic, no I/O; ``bench/compat.py`` reads the topics and prints the result).

Records are paired by (table, key, op, ordinal): the n-th record with that key and op in
one tool's topic is paired with the n-th in the other's (transaction BEGIN/END records by
their xid alone: the LSN in a transaction id is each tool's own choice). Values are compared
leaf by leaf with their JSON text kept exact (``1.0`` is not ``1``, ``1e400`` is not
rounded), except:

* the envelope's own ``ts_ms``/``ts_us``/``ts_ns`` are processing times: only whether they
  are there and are numbers is compared;
* ``source.name`` is the topic prefix, different by construction: it is compared with each
  tool's prefix replaced by ``<prefix>``;
* ``source.sequence`` is a JSON array inside a string: its elements are compared one by one;
* a transaction's ``data_collections`` are compared sorted by name (Debezium's order is that
  of a Java hash map).

A difference is (table, field path, Debezium's text, ours); identical ones are grouped and
counted. The Kafka partition and the key's bytes are compared too (fields ``(partition)``
and ``(key)``); a record one tool wrote and the other did not is field ``(record)``.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

#: Top-level envelope fields stamped at processing time: presence and type only.
PROCESSING_TIMES = frozenset({"ts_ms", "ts_us", "ts_ns"})
MAX_TEXT = 160


class Num(str):
    """A JSON number kept as the text it was written as."""


def parse(raw: bytes | None) -> Any:
    """JSON with numbers kept as ``Num`` text (NaN/Infinity literals too)."""
    if raw is None:
        return None
    return json.loads(raw, parse_int=Num, parse_float=Num, parse_constant=Num)


def text(value: Any) -> str:
    """A value as JSON text (numbers exactly as written), for display and grouping."""
    if isinstance(value, Num):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{text(v)}"
                              for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(text(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class Record:
    """One Kafka record, parsed. ``table`` is ``schema.table``, ``message`` or
    ``transaction``; ``op`` is the envelope's op, ``tombstone``, or BEGIN/END."""

    table: str
    key: Any
    op: str
    partition: int
    raw_key: bytes | None
    value: Any


def record(table: str, partition: int, raw_key: bytes | None, raw_value: bytes | None,
           ) -> Record:
    value = parse(raw_value)
    if value is None:
        op = "tombstone"
    elif isinstance(value, dict) and "op" in value:
        op = str(value["op"])
    elif isinstance(value, dict) and "status" in value:
        op = str(value["status"])
    else:
        op = "?"
    return Record(table, parse(raw_key), op, partition, raw_key, value)


@dataclass
class Comparison:
    """The outcome: record counts per (table, op) and tool, grouped differences."""

    counts: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    #: (table, field, debezium text, our text) -> number of record pairs
    differences: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    #: one example key per difference, to find the row again
    examples: dict[tuple[str, str, str, str], str] = field(default_factory=dict)
    pairs: int = 0

    def fields(self) -> set[tuple[str, str]]:
        return {(t, f) for t, f, _, _ in self.differences}

    def summary(self) -> str:
        """"N differences in M fields": rows and distinct (table, field) of the table
        ``collapse`` shows; the raw count of distinct values follows in brackets."""
        rows = collapse(self)
        fields = {(t, f) for t, f, *_ in rows}
        return (f"{len(rows)} differences in {len(fields)} fields ({self.pairs} record pairs "
                f"compared; {len(self.differences)} distinct raw differences in "
                f"{len(self.fields())} table fields)")


def compare(debezium: list[Record], ours: list[Record],
            prefixes: tuple[str, str]) -> Comparison:
    """Pair and compare; ``prefixes`` = (Debezium's topic prefix, ours)."""
    out = Comparison()
    for tool, records in enumerate((debezium, ours)):
        for r in records:
            out.counts.setdefault((r.table, r.op), [0, 0])[tool] += 1
    grouped = [_by_identity(debezium), _by_identity(ours)]
    for ident in sorted(set(grouped[0]) | set(grouped[1]), key=repr):
        a, b = grouped[0].get(ident), grouped[1].get(ident)
        table, key_text, op, _ = ident
        if a is None or b is None:
            _add(out, table, f"(record) op {op}", "present" if a else "missing",
                 "present" if b else "missing", key_text)
            continue
        out.pairs += 1
        for path, x, y in _record_differences(a, b, prefixes):
            _add(out, table, path, x, y, key_text)
    return out


def _by_identity(records: list[Record]) -> dict[tuple[str, str, str, int], Record]:
    seen: Counter[tuple[str, str, str]] = Counter()
    out = {}
    for r in records:
        key = _transaction_xid(r) if r.table == "transaction" else _canonical(r.key)
        base = (r.table, key, r.op)
        out[(*base, seen[base])] = r
        seen[base] += 1
    return out


def _transaction_xid(r: Record) -> str:
    """A transaction record's PostgreSQL xid: the part of its id (``<xid>:<LSN>``) both
    tools agree on; the LSN part is chosen differently by each."""
    tx_id = r.key.get("id") if isinstance(r.key, dict) else None
    return str(tx_id).split(":", 1)[0] if tx_id is not None else _canonical(r.key)


def _canonical(key: Any) -> str:
    if isinstance(key, dict):
        return text({k: key[k] for k in sorted(key)})
    return text(key)


def _add(out: Comparison, table: str, path: str, x: str, y: str, key: str) -> None:
    item = (table, path, _short(x), _short(y))
    out.differences[item] += 1
    out.examples.setdefault(item, key)


def _short(s: str) -> str:
    return s if len(s) <= MAX_TEXT else s[:MAX_TEXT - 12] + f"...({len(s)} ch)"


def _record_differences(a: Record, b: Record,
                        prefixes: tuple[str, str]) -> list[tuple[str, str, str]]:
    diffs: list[tuple[str, str, str]] = []
    # A record without a key (a truncate) goes to any partition, in both tools, by design.
    if a.partition != b.partition and a.raw_key is not None:
        diffs.append(("(partition)", str(a.partition), str(b.partition)))
    if a.raw_key != b.raw_key:
        diffs.append(("(key)", _raw(a.raw_key), _raw(b.raw_key)))
    va, vb = a.value, b.value
    if isinstance(va, dict) and isinstance(vb, dict):
        va, vb = _normalise(va, prefixes[0]), _normalise(vb, prefixes[1])
    _walk("", va, vb, diffs)
    return diffs


def _raw(raw: bytes | None) -> str:
    return "null" if raw is None else raw.decode("utf-8", "replace")


def _normalise(value: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Make the fields that differ by construction comparable (see the module docstring)."""
    value = dict(value)
    for name in PROCESSING_TIMES & value.keys():
        value[name] = "<number>" if isinstance(value[name], Num) else value[name]
    source = value.get("source")
    if isinstance(source, dict):
        source = dict(source)
        if source.get("name") == prefix:
            source["name"] = "<prefix>"
        seq = source.get("sequence")
        if isinstance(seq, str):
            with contextlib.suppress(ValueError):
                source["sequence"] = parse(seq.encode())
        value["source"] = source
    collections = value.get("data_collections")
    if isinstance(collections, list) and all(isinstance(c, dict) for c in collections):
        value["data_collections"] = sorted(collections, key=lambda c: text(c.get(
            "data_collection")))
    return value


def _walk(path: str, a: Any, b: Any, diffs: list[tuple[str, str, str]]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            sub = f"{path}.{k}" if path else k
            if k not in a or k not in b:
                diffs.append((sub, text(a[k]) if k in a else "(absent)",
                              text(b[k]) if k in b else "(absent)"))
            else:
                _walk(sub, a[k], b[k], diffs)
        if list(a) != [k for k in b if k in a] and set(a) == set(b):
            diffs.append((f"{path or '(value)'} key order", ",".join(a), ",".join(b)))
        return
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _walk(f"{path}[{i}]", x, y, diffs)
        return
    ta, tb = text(a), text(b)
    if ta != tb:
        diffs.append((path or "(value)", ta, tb))


def display_field(path: str) -> tuple[bool, str]:
    """(is a column, field as shown): ``before.x``/``after.x`` become the column ``x``
    (both row images are compared, their differences are shown together) and array
    indices become ``[]``; anything else is an envelope field."""
    for image in ("before.", "after."):
        if path.startswith(image):
            return True, re.sub(r"\[\d+\]", "[]", path[len(image):])
    return False, path


def collapse(comparison: Comparison, max_values: int = 3,
             ) -> list[tuple[str, str, str, str, str]]:
    """The difference table for people: rows (table, field, Debezium, ours, records).

    Columns are shown per table; an envelope difference (``source.*``, ``transaction``, ...)
    once, for every table it occurs in. A field with more than ``max_values`` distinct
    differences (an LSN per transaction, say) is one row: its most frequent difference as
    an example, and the count of distinct values next to the records."""
    merged: Counter[tuple[str, str, str, str]] = Counter()
    tables_of: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    all_tables = {t for t, _ in comparison.counts}
    for (table, path, x, y), n in comparison.differences.items():
        column, shown = display_field(path)
        merged[(table if column else "", shown, x, y)] += n
        tables_of[(shown, x, y)].add(table)
    per_field: dict[tuple[str, str], list[tuple[str, str, int]]] = defaultdict(list)
    for (table, shown, x, y), n in merged.items():
        per_field[(table, shown)].append((x, y, n))
    rows = []
    for (table, shown), items in sorted(per_field.items()):
        items.sort(key=lambda i: (-i[2], i[0], i[1]))
        label = table or _tables_label({t for x, y, _ in items
                                        for t in tables_of[(shown, x, y)]}, all_tables)
        if len(items) > max_values:
            x, y, _ = items[0]
            rows.append((label, shown, x, y,
                         f"{sum(i[2] for i in items)} ({len(items)} distinct, e.g.)"))
        else:
            rows += [(label, shown, x, y, str(n)) for x, y, n in items]
    return rows


def _tables_label(tables: set[str], all_tables: set[str]) -> str:
    if tables >= {t for t in all_tables if "." in t}:
        extra = sorted(t for t in tables if "." not in t)
        return "every table" + (f", {', '.join(extra)}" if extra else "")
    return ", ".join(sorted(t.split(".", 1)[-1] for t in tables))
