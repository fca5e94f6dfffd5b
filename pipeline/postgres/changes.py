"""From decoded pgoutput messages to change events (pure logic, no I/O)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.events import UNAVAILABLE_VALUE, ChangeEvent, Row, SourceInfo
from pipeline.postgres.pgoutput import (
    UNCHANGED_TOAST,
    Delete,
    Insert,
    Relation,
    TupleValue,
    Update,
)
from pipeline.postgres.values import _identity, converter_for


def _or_none(convert: Callable[[str], Any]) -> Callable[[str], Any] | None:
    return None if convert is _identity else convert


@dataclass(frozen=True, slots=True)
class TableShape:
    """A table as the current Relation message describes it, with per-column converters."""

    oid: int
    schema: str
    table: str
    names: tuple[str, ...]
    converters: tuple[Callable[[str], Any] | None, ...]
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
            # None marks text passed through as is: the hot path skips the call.
            converters=tuple(_or_none(converter_for(c.type_oid)) for c in rel.columns),
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
            elif convert is None:
                out[name] = value
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


class EnvelopeWriter:
    """The hot path of capture: encoded key and value bytes straight from a message.

    Produces exactly the bytes ``pipeline.events.encode_key``/``encode_value`` would write for
    the events ``ChangeBuilder.events`` builds (a unit test holds the two paths equal), but
    without building those objects: the parts of the ``source`` block shared by a
    transaction, and by a table within it, are encoded once.
    """

    def __init__(self, server_name: str, db: str) -> None:
        self._name = orjson.dumps(server_name)
        self._db = orjson.dumps(db)
        self._head = b""
        self._last = "null"
        self._mids: dict[int, bytes] = {}
        self._xid = 0

    def begin(self, txn: TransactionContext) -> None:
        """Start a transaction: encode what all its events share."""
        self._head = (
            b'{"version":"cdc-pipeline","connector":"postgresql","name":' + self._name
            + b',"ts_ms":' + str(txn.commit_ts_us // 1000).encode()
            + b',"ts_us":' + str(txn.commit_ts_us).encode()
            + b',"snapshot":"false","db":' + self._db + b',"sequence":'
        )
        self._last = "null" if txn.last_commit_lsn is None else f'"{txn.last_commit_lsn}"'
        self._xid = txn.xid
        self._mids = {}

    def _source(self, shape: TableShape, lsn: int) -> bytes:
        mid = self._mids.get(shape.oid)
        if mid is None:
            mid = self._mids[shape.oid] = (
                b',"schema":' + orjson.dumps(shape.schema) + b',"table":'
                + orjson.dumps(shape.table) + b',"txId":' + str(self._xid).encode()
                + b',"lsn":'
            )
        text = str(lsn)
        return (self._head + orjson.dumps(f'[{self._last},"{text}"]') + mid + text.encode()
                + b',"xmin":null}')

    def insert(
        self, msg: Insert, shape: TableShape, lsn: int, now_ms: bytes
    ) -> tuple[bytes, bytes]:
        """(key, value) of an insert: the most common message, without a generator."""
        return self.created(shape.row(msg.new), shape, lsn, now_ms)

    def created(
        self, after: Row, shape: TableShape, lsn: int, now_ms: bytes
    ) -> tuple[bytes, bytes]:
        """(key, value) of an insert whose row is already built (``pgoutput.insert_row``)."""
        return orjson.dumps(shape.key(after)), _value(
            b"null", orjson.dumps(after), self._source(shape, lsn), b"c", now_ms)

    def encode(
        self, msg: Insert | Update | Delete, shape: TableShape, lsn: int, now_ms: bytes
    ) -> Iterator[tuple[str, bytes, bytes]]:
        """(op, key bytes, value bytes) for each event of one message; ``now_ms`` is the
        processing time already encoded (it changes rarely, so the caller caches it)."""
        source = self._source(shape, lsn)
        if isinstance(msg, Insert):
            after = shape.row(msg.new)
            yield "c", orjson.dumps(shape.key(after)), _value(b"null", orjson.dumps(after),
                                                              source, b"c", now_ms)
        elif isinstance(msg, Update):
            after = shape.row(msg.new)
            new_key = shape.key(after)
            after_b = orjson.dumps(after)
            if msg.old is None:
                yield "u", orjson.dumps(new_key), _value(b"null", after_b, source, b"u", now_ms)
                return
            before = shape.row(msg.old)
            before_b = orjson.dumps(before)
            old_key = shape.key(before)
            if old_key != new_key:
                yield "d", orjson.dumps(old_key), _value(before_b, b"null", source, b"d", now_ms)
                yield "c", orjson.dumps(new_key), _value(b"null", after_b, source, b"c", now_ms)
            else:
                yield "u", orjson.dumps(new_key), _value(before_b, after_b, source, b"u", now_ms)
        else:
            before = shape.row(msg.old)
            yield "d", orjson.dumps(shape.key(before)), _value(
                orjson.dumps(before), b"null", source, b"d", now_ms)


def _value(before: bytes, after: bytes, source: bytes, op: bytes, now_ms: bytes) -> bytes:
    return (b'{"before":' + before + b',"after":' + after + b',"source":' + source
            + b',"op":"' + op + b'","ts_ms":' + now_ms + b',"transaction":null}')
