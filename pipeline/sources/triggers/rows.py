"""From change-log rows to the logical source's envelopes (pure logic, no I/O).

A log row holds the old and new row as ``{column: text}``, each value its type's text
output printed with the logical source's session settings (see :mod:`.ddl`). They are
converted with the table's :class:`~pipeline.sources.postgres.envelope.TableShape`, the
converters the logical source uses, so a consumer cannot tell which source wrote a record,
except for what triggers see better: ``before`` is always the whole old row (as with
``REPLICA IDENTITY FULL``), and no value is ever an unchanged-TOAST placeholder.

Positions: ``source.lsn`` is the WAL insert position when the trigger ran. One row's
changes get increasing positions in commit order (a second transaction changes a row only
after the first committed, so past its commit record; and inside one transaction each log
insert moves the WAL on), and they are WAL positions like the logical source's, so an index
built by one source keeps its versions under the other. ``sequence[0]`` (the commit) is
unknown to a trigger: null, so the workers compare trigger changes by LSN alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.capture.source import ANY_PARTITION, EVERY_PARTITION, Record
from pipeline.events import ChangeEvent, Row, SourceInfo, encode_key, encode_value
from pipeline.sources.postgres.envelope import TableShape

#: Debezium's PostgreSQL ``txId`` is the 32-bit transaction id (``xid8`` without its epoch).
_XID_MASK = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class LogRow:
    """One row of the change log."""

    id: int
    xid: int
    lsn: int
    op: str  # c, u, d or t
    schema: str
    table: str
    old: dict[str, str | None] | None
    new: dict[str, str | None] | None
    captured_at_us: int

    @property
    def table_id(self) -> str:
        return f"{self.schema}.{self.table}"


def unknown_columns(shape: TableShape, row: LogRow) -> bool:
    """True when an image names a column the shape does not know (added since it was
    read from the catalog): the caller describes the table again."""
    names = shape.names
    return any(
        image is not None and any(column not in names for column in image)
        for image in (row.old, row.new)
    )


def image(shape: TableShape, values: dict[str, str | None]) -> Row:
    """The converted row, columns in table order. A column dropped since the change is
    kept as its text (it existed when the change was made); a column added since is left
    out (it did not)."""
    names = shape.names
    if len(values) == len(names) and all(n in values for n in names):
        return shape.row(tuple(values[n] for n in names))  # type: ignore[arg-type]
    converted = shape.row(tuple(values.get(n) for n in names))  # type: ignore[arg-type]
    out: Row = {n: converted[n] for n in names if n in values}
    for column, text in values.items():
        if column not in out:
            out[column] = text
    return out


class LogRowEncoder:
    """Encodes log rows as raw-topic records, as the logical source writes them."""

    def __init__(self, server_name: str, db: str, tombstones: bool = True) -> None:
        self.server_name = server_name
        self.db = db
        #: kafka.tombstones_on_delete: a delete is followed by a tombstone of its key.
        self.tombstones = tombstones

    def source(self, row: LogRow) -> SourceInfo:
        return SourceInfo(
            connector="postgresql", name=self.server_name, db=self.db, schema=row.schema,
            table=row.table, ts_us=row.captured_at_us, tx_id=row.xid & _XID_MASK,
            lsn=row.lsn, commit_lsn=None,
        )

    def events(self, row: LogRow, shape: TableShape, now_ms: int) -> list[ChangeEvent]:
        """A log row's events: a primary-key change is a delete of the old key and a create
        of the new one (as Debezium and the logical source write it)."""
        source = self.source(row)
        if row.op == "t":
            return [ChangeEvent("t", None, None, None, source, now_ms)]
        before = image(shape, row.old) if row.old is not None else None
        after = image(shape, row.new) if row.new is not None else None
        if row.op == "c" and after is not None:
            return [ChangeEvent("c", shape.key(after), None, after, source, now_ms)]
        if row.op == "d" and before is not None:
            return [ChangeEvent("d", shape.key(before), before, None, source, now_ms)]
        if row.op == "u" and before is not None and after is not None:
            old_key, new_key = shape.key(before), shape.key(after)
            if old_key != new_key:
                return [ChangeEvent("d", old_key, before, None, source, now_ms),
                        ChangeEvent("c", new_key, None, after, source, now_ms)]
            return [ChangeEvent("u", new_key, before, after, source, now_ms)]
        raise ValueError(f"change log row {row.id} of {row.table_id}: op {row.op!r} with "
                         f"old={'set' if row.old is not None else 'null'}, "
                         f"new={'set' if row.new is not None else 'null'} is no change")

    def records(self, row: LogRow, shape: TableShape, topic: str,
                now_ms: int) -> list[Record]:
        """``(topic, key, value, partition)`` per event; a truncate goes to every partition."""
        out: list[Record] = []
        for event in self.events(row, shape, now_ms):
            partition = EVERY_PARTITION if event.op == "t" else ANY_PARTITION
            key = encode_key(event)
            out.append((topic, key, encode_value(event), partition))
            if event.op == "d" and self.tombstones:
                out.append((topic, key, None, ANY_PARTITION))
        return out


def parse_row(values: tuple[Any, ...], loads: Any) -> LogRow:
    """A log row from ``SELECT`` :data:`pipeline.sources.triggers.source.READ_COLUMNS`."""
    id_, xid, lsn, op, schema, table, old, new, captured_at_us = values
    return LogRow(int(id_), int(xid), int(lsn), op, schema, table,
                  None if old is None else loads(old), None if new is None else loads(new),
                  int(captured_at_us))
