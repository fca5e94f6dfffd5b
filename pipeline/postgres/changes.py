"""From decoded pgoutput messages to change events (pure logic, no I/O)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.events import UNAVAILABLE_VALUE, ChangeEvent, Row, SourceInfo
from pipeline.postgres.pgoutput import (
    UNCHANGED_TOAST,
    Delete,
    Insert,
    Relation,
    TupleValue,
    Update,
)
from pipeline.postgres.values import converter_for


@dataclass(frozen=True, slots=True)
class TableShape:
    """A table as the current Relation message describes it, with per-column converters."""

    oid: int
    schema: str
    table: str
    names: tuple[str, ...]
    converters: tuple[Callable[[str], Any], ...]
    key_names: tuple[str, ...]

    @classmethod
    def from_relation(cls, rel: Relation, primary_key: tuple[str, ...]) -> TableShape:
        names = tuple(c.name for c in rel.columns)
        key = primary_key or tuple(c.name for c in rel.columns if c.is_key)
        return cls(
            oid=rel.oid,
            schema=rel.namespace or "pg_catalog",
            table=rel.name,
            names=names,
            converters=tuple(converter_for(c.type_oid) for c in rel.columns),
            key_names=key,
        )

    @property
    def table_id(self) -> str:
        return f"{self.schema}.{self.table}"

    def row(self, values: tuple[TupleValue, ...]) -> Row:
        """Column name -> JSON-friendly value; an unchanged TOAST value becomes the
        placeholder, never None, so a sink can tell it from a real NULL."""
        out: Row = {}
        for name, convert, value in zip(self.names, self.converters, values, strict=False):
            if value is None:
                out[name] = None
            elif value is UNCHANGED_TOAST:
                out[name] = UNAVAILABLE_VALUE
            else:
                out[name] = convert(value)  # type: ignore[arg-type]
        return out

    def key(self, row: Row) -> Row:
        return {name: row.get(name) for name in self.key_names}


@dataclass(slots=True)
class TransactionContext:
    """What every event of one transaction shares."""

    xid: int
    commit_ts_us: int
    last_commit_lsn: int | None


class ChangeBuilder:
    """Builds Debezium-shaped events for one database; stateless apart from its settings."""

    def __init__(self, server_name: str, db: str) -> None:
        self.server_name = server_name
        self.db = db

    def source(self, shape: TableShape, txn: TransactionContext, lsn: int) -> SourceInfo:
        return SourceInfo(
            connector="postgresql",
            name=self.server_name,
            db=self.db,
            schema=shape.schema,
            table=shape.table,
            ts_us=txn.commit_ts_us,
            tx_id=txn.xid,
            lsn=lsn,
            commit_lsn=txn.last_commit_lsn,
        )

    def events(
        self,
        msg: Insert | Update | Delete,
        shape: TableShape,
        txn: TransactionContext,
        lsn: int,
        now_ms: int,
    ) -> Iterator[ChangeEvent]:
        """One message -> its events. A primary-key change becomes a delete of the old key
        and a create of the new one, as Debezium does, so each key's topic partition sees a
        complete history."""
        source = self.source(shape, txn, lsn)
        if isinstance(msg, Insert):
            after = shape.row(msg.new)
            yield ChangeEvent("c", shape.key(after), None, after, source, now_ms)
        elif isinstance(msg, Update):
            after = shape.row(msg.new)
            before = shape.row(msg.old) if msg.old is not None else None
            new_key = shape.key(after)
            if before is not None:
                old_key = shape.key(before)
                if old_key != new_key:
                    yield ChangeEvent("d", old_key, before, None, source, now_ms)
                    yield ChangeEvent("c", new_key, None, after, source, now_ms)
                    return
            yield ChangeEvent("u", new_key, before, after, source, now_ms)
        else:
            before = shape.row(msg.old)
            yield ChangeEvent("d", shape.key(before), before, None, source, now_ms)

    def truncate(
        self, shape: TableShape, txn: TransactionContext, lsn: int, now_ms: int
    ) -> ChangeEvent:
        return ChangeEvent("t", None, None, None, self.source(shape, txn, lsn), now_ms)
