"""From binlog rows to Debezium-compatible records (pure logic, no I/O).

The ``source`` block is Debezium's MySQL one (``connector``, ``name``, ``db``, ``table``,
``server_id``, ``gtid``, ``file``, ``pos``, ``row``, ``thread``, ``query``) plus what this
pipeline's workers read: ``schema`` (the database again: a table is ``database.table``
here, as ``schema.table`` is for PostgreSQL), ``lsn`` (:func:`pipeline.positions.binlog_lsn`)
and ``sequence``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.positions import binlog_lsn
from pipeline.sources.mysql.values import Converter, convert_row, converter, zero_date

Row = dict[str, Any]

_TRUNCATE = re.compile(
    r"^\s*TRUNCATE\s+(?:TABLE\s+)?(?:`((?:[^`]|``)+)`|(\w+))"
    r"(?:\s*\.\s*(?:`((?:[^`]|``)+)`|(\w+)))?\s*;?\s*$", re.IGNORECASE)


def truncated_table(query: str, default_db: str) -> str | None:
    """``db.table`` a ``TRUNCATE [TABLE] [db.]table`` statement empties, else None. The
    binlog keeps the statement as written, comments included."""
    match = _TRUNCATE.match(without_comments(query))
    if match is None:
        return None
    first = (match.group(1) or "").replace("``", "`") or match.group(2)
    second = (match.group(3) or "").replace("``", "`") or match.group(4)
    if second:
        return f"{first}.{second}"
    return f"{default_db}.{first}" if default_db else None


_COMMENT = re.compile(
    r"(`(?:[^`]|``)*`)"  # an identifier: kept as it is
    r"|/\*!\d*|\*/"  # an executable comment's markers: its text runs
    r"|/\*.*?\*/|--(?:\s[^\n]*)?$|--\s[^\n]*|#[^\n]*",  # comments
    re.DOTALL | re.MULTILINE)


def without_comments(query: str) -> str:
    """``query`` with its comments (``/* */``, ``-- ``, ``#``) as spaces; the text of an
    executable comment (``/*!50001 ... */``) stays, as the server runs it."""
    return _COMMENT.sub(lambda m: m.group(1) or " ", query)


@dataclass(frozen=True, slots=True)
class TableImage:
    """A table as one table-map event describes it (its columns at the event's time)."""

    db: str
    table: str
    converters: dict[str, Converter | None]
    key_names: tuple[str, ...]
    #: The zero date's value of each NOT NULL DATE/DATETIME column (the library reads it
    #: as None).
    zeros: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, db: str, table: str, columns: list[Any], key_names: tuple[str, ...],
           null_bitmap: bytes | None = None) -> TableImage:
        """``null_bitmap``: the table map's, bit ``i`` set when column ``i`` is nullable
        (None: take every column as nullable)."""
        nullable = [null_bitmap is None or bool(null_bitmap[i >> 3] >> (i & 7) & 1)
                    for i in range(len(columns))]
        zeros = {c.name: zero_date(c) for c, n in zip(columns, nullable, strict=True)
                 if not n and zero_date(c) is not None}
        return cls(db, table, {c.name: converter(c, n)
                               for c, n in zip(columns, nullable, strict=True)},
                   key_names, zeros)

    @property
    def table_id(self) -> str:
        return f"{self.db}.{self.table}"

    def row(self, values: Row, none_sources: dict[str, str]) -> Row:
        return convert_row(values, self.converters, none_sources, self.zeros)

    def key(self, row: Row) -> bytes:
        return orjson.dumps({name: row.get(name) for name in self.key_names})


@dataclass(slots=True)
class EventContext:
    """Where one binlog event sits and what its transaction shares."""

    file: str
    pos: int  # the event's start
    ts_s: int
    server_id: int
    gtid: str | None
    thread: int | None
    #: Where its transaction commits in the binlog (``binlog_lsn`` of the transaction's
    #: first event, or of an XA COMMIT's), ``source.sequence[0]``: the workers order by
    #: it first; None for reads.
    commit: int | None = None


class EnvelopeWriter:
    """Builds the (key, value) bytes of binlog changes for one server."""

    def __init__(self, connector: str, server_name: str) -> None:
        self.connector = connector
        self.server_name = server_name

    def source(self, ctx: EventContext, db: str, table: str, row: int,
               snapshot: str = "false") -> dict[str, Any]:
        lsn = binlog_lsn(ctx.file, ctx.pos, row)
        return {
            "version": "cdc-pipeline",
            "connector": self.connector,
            "name": self.server_name,
            "ts_ms": ctx.ts_s * 1000,
            "ts_us": ctx.ts_s * 1_000_000,
            "snapshot": snapshot,
            "db": db,
            "sequence": orjson.dumps([None if ctx.commit is None else str(ctx.commit),
                                      str(lsn)]).decode(),
            "schema": db,
            "table": table,
            "server_id": ctx.server_id,
            "gtid": ctx.gtid,
            "file": ctx.file,
            "pos": ctx.pos,
            "row": row,
            "thread": ctx.thread,
            "query": None,
            "txId": None,
            "lsn": lsn,
            "xmin": None,
        }

    def change(self, op: str, image: TableImage, before: Row | None, after: Row | None,
               ctx: EventContext, row: int, now_ms: int) -> tuple[str, bytes, bytes]:
        """(op, key, value) of one row change."""
        value = {"before": before, "after": after,
                 "source": self.source(ctx, image.db, image.table, row),
                 "op": op, "ts_ms": now_ms, "transaction": None}
        key = image.key(after if after is not None else before or {})
        return op, key, orjson.dumps(value)

    def read(self, image: TableImage, after: Row, ctx: EventContext, marker: str,
             now_ms: int) -> tuple[bytes, bytes]:
        """(key, value) of a snapshot read of ``after`` (``source.snapshot`` = ``marker``).
        ``ctx`` is the snapshot's binlog position: every read of one snapshot shares its
        ``source.lsn``, and ranks below every streamed change of its row."""
        value = {"before": None, "after": after,
                 "source": self.source(ctx, image.db, image.table, 0, marker),
                 "op": "r", "ts_ms": now_ms, "transaction": None}
        return image.key(after), orjson.dumps(value)

    def changes(self, kind: str, image: TableImage, raw: Row, ctx: EventContext, row: int,
                now_ms: int) -> list[tuple[str, bytes, bytes]]:
        """The records of one row of a rows event (``kind`` write/update/delete). A
        primary-key change is a delete of the old key and a create of the new one, as
        Debezium writes it, so each key's partition sees a whole history."""
        if kind == "write":
            after = image.row(raw["values"], raw.get("none_sources", {}))
            return [self.change("c", image, None, after, ctx, row, now_ms)]
        if kind == "delete":
            before = image.row(raw["values"], raw.get("none_sources", {}))
            return [self.change("d", image, before, None, ctx, row, now_ms)]
        before = image.row(raw["before_values"], raw.get("before_none_sources", {}))
        after = image.row(raw["after_values"], raw.get("after_none_sources", {}))
        if image.key(before) != image.key(after):
            return [self.change("d", image, before, None, ctx, row, now_ms),
                    self.change("c", image, None, after, ctx, row, now_ms)]
        return [self.change("u", image, before, after, ctx, row, now_ms)]

    def truncate(self, db: str, table: str, ctx: EventContext, now_ms: int) -> bytes:
        return orjson.dumps({"before": None, "after": None,
                             "source": self.source(ctx, db, table, 0),
                             "op": "t", "ts_ms": now_ms, "transaction": None})
