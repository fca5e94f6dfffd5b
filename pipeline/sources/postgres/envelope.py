"""From decoded pgoutput messages to change events (pure logic, no I/O)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.capture.source import ANY_PARTITION
from pipeline.config import TableColumnSettings
from pipeline.events import UNAVAILABLE_BINARY, UNAVAILABLE_VALUE, ChangeEvent, Row, SourceInfo
from pipeline.sources.postgres.columns import ColumnPolicy
from pipeline.sources.postgres.decimals import DecimalMode
from pipeline.sources.postgres.pgoutput import (
    UNCHANGED_TOAST,
    Delete,
    Insert,
    Message,
    PgoutputDecodeError,
    Relation,
    TupleValue,
    Update,
    decode_message,
    insert_relation_oid,
    insert_row,
    take_replaced_values,
)
from pipeline.sources.postgres.types import PgType
from pipeline.sources.postgres.unconverted import UnconvertedValues
from pipeline.sources.postgres.values import (
    BUILTIN_TYPE_OIDS,
    BYTEA_OID,
    _identity,
    converter_for_type,
)

_BUILTIN_NAMES = {oid: name for name, oid in BUILTIN_TYPE_OIDS.items()}
_PLACEHOLDERS = (UNAVAILABLE_VALUE, UNAVAILABLE_BINARY)


def fill_unchanged(after: Row, before: Row) -> Row:
    """``after`` with each unchanged-TOAST placeholder replaced by the value ``before``
    holds, where it holds one: a key column of a ``K`` old tuple (PostgreSQL logs the old key
    when it is stored out of line, and sends it as unchanged in the new tuple), or any column
    under ``REPLICA IDENTITY FULL``. Without this a TOASTed key would turn an update into a
    delete and a create keyed by the placeholder. A NULL in ``before`` is left alone: a
    ``K`` tuple sends every non-key column as NULL."""
    for name, value in after.items():
        if type(value) is str and value in _PLACEHOLDERS:
            old = before.get(name)
            if old is not None and not (type(old) is str and old in _PLACEHOLDERS):
                after[name] = old
    return after


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
    #: Each column's type name (metric label of values a converter refused).
    type_names: tuple[str, ...] = ()
    #: Columns whose unchanged-TOAST placeholder is binary (``bytea``: base64 of its bytes).
    binary_columns: frozenset[str] = frozenset()
    #: Where values a converter refused are counted (the capture drains it into metrics).
    unconverted: UnconvertedValues = field(default_factory=UnconvertedValues, compare=False)
    #: Columns left out, masked or hashed (``postgres.columns``); None: the row as it is.
    policy: ColumnPolicy | None = field(default=None, compare=False)
    #: ``{"<column>":`` for a one-column key (its JSON is written without a dict), else None.
    _key_prefix: bytes | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        prefix = (b"{" + orjson.dumps(self.key_names[0]) + b":"
                  if len(self.key_names) == 1 else None)
        object.__setattr__(self, "_key_prefix", prefix)

    @classmethod
    def from_relation(
        cls,
        rel: Relation,
        primary_key: tuple[str, ...],
        types: Sequence[PgType] | None = None,
        decimal_mode: DecimalMode = "string",
        unconverted: UnconvertedValues | None = None,
        *,
        schema: str | None = None,
        table: str | None = None,
        columns: TableColumnSettings | None = None,
    ) -> TableShape:
        """The shape of ``rel``; ``types`` are its columns' types as the catalog resolved
        them (:class:`~pipeline.sources.postgres.types.TypeResolver`), by default each
        column's OID taken as a built-in type. ``schema``/``table``: the name to publish
        under when it is not the relation's own (a partition published as its root).
        ``columns``: the table's column rules (SourceSetupError when they do not fit it)."""
        names = tuple(c.name for c in rel.columns)
        key = primary_key or tuple(c.name for c in rel.columns if c.is_key)
        if types is None:
            types = [PgType.builtin(c.type_oid, _BUILTIN_NAMES.get(c.type_oid))
                     for c in rel.columns]
        converters = tuple(
            # None marks text passed through as is: the hot path skips the call.
            _or_none(converter_for_type(t, c.type_modifier, decimal_mode))
            for c, t in zip(rel.columns, types, strict=True)
        )
        schema = schema or rel.namespace or "pg_catalog"
        table = table or rel.name
        return cls(
            oid=rel.oid,
            schema=schema,
            table=table,
            names=names,
            converters=converters,
            key_names=key,
            type_names=tuple(t.name for t in types),
            binary_columns=frozenset(
                c.name for c, t in zip(rel.columns, types, strict=True)
                if t.kind == "builtin" and t.oid == BYTEA_OID
            ),
            unconverted=unconverted if unconverted is not None else UnconvertedValues(),
            policy=ColumnPolicy.of(f"{schema}.{table}", columns, names, key),
        )

    @property
    def table_id(self) -> str:
        return f"{self.schema}.{self.table}"

    def row(self, values: tuple[TupleValue, ...]) -> Row:
        """Column name -> JSON-friendly value; an unchanged TOAST value becomes the
        placeholder, never None, so a sink can tell it from a real NULL. A value its
        converter refuses stays PostgreSQL's text and is counted in ``unconverted``."""
        out: Row = {}
        names = self.names
        converters = self.converters
        for i in range(min(len(names), len(values))):  # indexed: compiled, cheaper than zip
            name = names[i]
            value = values[i]
            convert = converters[i]
            if value is None:
                out[name] = None
            elif value is UNCHANGED_TOAST:
                out[name] = (UNAVAILABLE_BINARY if name in self.binary_columns
                             else UNAVAILABLE_VALUE)
            elif convert is None:
                out[name] = value
            else:
                try:
                    out[name] = convert(value)  # type: ignore[arg-type]
                except Exception as exc:  # noqa: BLE001 (a gap in a converter: see unconverted)
                    out[name] = self._unconverted(name, value, exc)
        return out if self.policy is None else self.policy.apply(out)

    def _unconverted(self, name: str, value: Any, exc: Exception) -> Any:
        if not isinstance(value, str):
            raise exc  # binary-format values are not converted here
        i = self.names.index(name)
        type_name = self.type_names[i] if i < len(self.type_names) else "unknown"
        return self.unconverted.record(self.table_id, name, type_name, value, exc)

    def reads(self, rows: Sequence[tuple[TupleValue, ...]], start: int, stop: int,
              topic: str, head: bytes, tail: bytes) -> list[tuple[str, bytes, bytes, int]]:
        """The records of snapshot reads of ``rows[start:stop]`` (each its columns' values as
        :meth:`row` takes them): each value is ``head`` + the row's JSON + ``tail``, the
        halves of the envelope every read of one chunk shares
        (:class:`~pipeline.sources.postgres.reads.ReadEncoder`). One compiled loop per chunk."""
        out: list[tuple[str, bytes, bytes, int]] = []
        dumps = orjson.dumps
        join = b"".join
        for i in range(start, stop):
            row = self.row(rows[i])
            out.append((topic, self.key_json(row), join((head, dumps(row), tail)),
                        ANY_PARTITION))
        return out

    def key(self, row: Row) -> Row:
        return {name: row.get(name) for name in self.key_names}

    def key_json(self, row: Row) -> bytes:
        """``orjson.dumps(self.key(row))``, without the dict for a one-column key."""
        if self._key_prefix is not None:
            return self._key_prefix + orjson.dumps(row.get(self.key_names[0])) + b"}"
        return orjson.dumps({name: row.get(name) for name in self.key_names})


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
            if before is not None:
                fill_unchanged(after, before)
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

    def message(
        self, msg: Message, txn: TransactionContext | None, lsn: int,
        last_commit_lsn: int | None, now_ms: int,
    ) -> tuple[bytes, bytes]:
        """(key, value) of a logical decoding message, as Debezium writes it: ``op: m``, key
        ``{"prefix"}``, the content base64 in ``message``; no table. A non-transactional
        message has no transaction (``txId`` null)."""
        last = txn.last_commit_lsn if txn is not None else last_commit_lsn
        source = SourceInfo(
            connector="postgresql", name=self.server_name, db=self.db, schema="", table="",
            ts_us=txn.commit_ts_us if txn is not None else now_ms * 1000,
            tx_id=txn.xid if txn is not None else None, lsn=lsn, commit_lsn=last,
        )
        value = {
            "op": "m",
            "ts_ms": now_ms,
            "source": source.to_dict(),
            "message": {"prefix": msg.prefix,
                        "content": base64.b64encode(msg.content).decode()},
        }
        return orjson.dumps({"prefix": msg.prefix}), orjson.dumps(value)


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
        # Per transaction: the source block up to the LSN inside ``sequence`` (the sequence
        # is a JSON string holding an array, so its quotes are escaped).
        self._pre = b""
        self._mids: dict[int, bytes] = {}
        self._xid = 0
        self._tails: dict[bytes, bytes] = {}
        self._tails_ms = b""

    def begin(self, txn: TransactionContext) -> None:
        """Start a transaction: encode what all its events share."""
        last = (b"null" if txn.last_commit_lsn is None
                else b'\\"' + str(txn.last_commit_lsn).encode() + b'\\"')
        self._pre = (
            b'{"version":"cdc-pipeline","connector":"postgresql","name":' + self._name
            + b',"ts_ms":' + str(txn.commit_ts_us // 1000).encode()
            + b',"ts_us":' + str(txn.commit_ts_us).encode()
            + b',"snapshot":"false","db":' + self._db + b',"sequence":"[' + last + b',\\"'
        )
        self._xid = txn.xid
        self._mids = {}

    def _mid(self, shape: TableShape) -> bytes:
        """From the end of the LSN in ``sequence`` to the ``lsn`` field's value."""
        mid = self._mids.get(shape.oid)
        if mid is None:
            mid = self._mids[shape.oid] = (
                b'\\"]","schema":' + orjson.dumps(shape.schema) + b',"table":'
                + orjson.dumps(shape.table) + b',"txId":' + str(self._xid).encode()
                + b',"lsn":'
            )
        return mid

    def _tail(self, op: bytes, now_ms: bytes) -> bytes:
        """After the ``lsn`` value: the end of the source block, op, ts_ms, transaction."""
        if now_ms != self._tails_ms:
            self._tails = {}
            self._tails_ms = now_ms
        tail = self._tails.get(op)
        if tail is None:
            tail = self._tails[op] = (b',"xmin":null},"op":"' + op + b'","ts_ms":' + now_ms
                                      + b',"transaction":null}')
        return tail

    def _source(self, shape: TableShape, lsn: int) -> bytes:
        text = str(lsn).encode()
        return b"".join((self._pre, text, self._mid(shape), text, b',"xmin":null}'))

    def insert(
        self, msg: Insert, shape: TableShape, lsn: int, now_ms: bytes
    ) -> tuple[bytes, bytes]:
        """(key, value) of an insert: the most common message, without a generator."""
        return self.created(shape.row(msg.new), shape, lsn, now_ms)

    def created(
        self, after: Row, shape: TableShape, lsn: int, now_ms: bytes
    ) -> tuple[bytes, bytes]:
        """(key, value) of an insert whose row is already built (``pgoutput.insert_row``)."""
        text = str(lsn).encode()
        return shape.key_json(after), b"".join((
            b'{"before":null,"after":', orjson.dumps(after), b',"source":', self._pre, text,
            self._mid(shape), text, self._tail(b"c", now_ms)))

    def encode(
        self, msg: Insert | Update | Delete, shape: TableShape, lsn: int, now_ms: bytes
    ) -> Iterator[tuple[str, bytes, bytes]]:
        """(op, key bytes, value bytes) for each event of one message; ``now_ms`` is the
        processing time already encoded (it changes rarely, so the caller caches it)."""
        source = self._source(shape, lsn)
        key_json = shape.key_json
        if isinstance(msg, Insert):
            yield "c", *self.created(shape.row(msg.new), shape, lsn, now_ms)
        elif isinstance(msg, Update):
            after = shape.row(msg.new)
            if msg.old is None:
                yield "u", key_json(after), _value(b"null", orjson.dumps(after), source, b"u",
                                                   now_ms)
                return
            before = shape.row(msg.old)
            fill_unchanged(after, before)
            new_key = key_json(after)
            after_b = orjson.dumps(after)
            before_b = orjson.dumps(before)
            old_key = key_json(before)
            if old_key != new_key:
                yield "d", old_key, _value(before_b, b"null", source, b"d", now_ms)
                yield "c", new_key, _value(b"null", after_b, source, b"c", now_ms)
            else:
                yield "u", new_key, _value(before_b, after_b, source, b"u", now_ms)
        else:
            before = shape.row(msg.old)
            yield "d", key_json(before), _value(orjson.dumps(before), b"null", source, b"d",
                                                now_ms)


class RecordEmitter:
    """Appends the raw-topic records of a message to a read batch and counts them per table
    and operation: the source's per-message work, compiled with the writer.

    Used only while no option rewrites records (skipped operations, transaction metadata, a
    backfill window on the table): the source checks those and otherwise takes its general
    path. ``shapes``, ``topics`` and ``counts`` are the source's own dicts, shared.
    """

    def __init__(self, writer: EnvelopeWriter, shapes: dict[int, TableShape],
                 topics: dict[int, str], counts: dict[tuple[int, str], int],
                 tombstones: bool) -> None:
        self.writer = writer
        self.shapes = shapes
        self.topics = topics
        self.counts = counts
        self.tombstones = tombstones

    def take(self, payload: bytes, lsn: int, out: list[Any], now_ms: bytes) -> bool:
        """An Insert, Update or Delete of a known table; False (nothing appended) for any
        other message, and for one with anything unusual (bytes that are not UTF-8, a
        payload the decoder refuses): the general path reads it again and says what."""
        kind = payload[0] if payload else 0
        if kind == 0x49:  # 'I'
            return self.insert(payload, lsn, out, now_ms)
        if kind != 0x55 and kind != 0x44:  # 'U', 'D'
            return False
        try:
            msg = decode_message(payload)
        except PgoutputDecodeError:
            return False
        if take_replaced_values():
            return False
        if not isinstance(msg, (Update, Delete)):
            return False
        shape = self.shapes.get(msg.relation_oid)
        if shape is None:
            return False
        self.change(msg, shape, lsn, out, now_ms)
        return True

    def insert(self, payload: bytes, lsn: int, out: list[Any], now_ms: bytes) -> bool:
        """An Insert message of a known table, decoded straight from its bytes; False (and
        nothing appended) for any other message or anything unusual."""
        oid = insert_relation_oid(payload)
        if oid is None:
            return False
        shape = self.shapes.get(oid)
        if shape is None:
            return False
        try:
            row = insert_row(payload, shape.names, shape.converters, UNAVAILABLE_VALUE)
        except PgoutputDecodeError:
            return False  # the general decoder says what
        if shape.policy is not None:
            row = shape.policy.apply(row)
        key, value = self.writer.created(row, shape, lsn, now_ms)
        out.append((self.topics[oid], key, value, ANY_PARTITION))
        counted = (oid, "c")
        self.counts[counted] = self.counts.get(counted, 0) + 1
        return True

    def change(self, msg: Insert | Update | Delete, shape: TableShape, lsn: int,
               out: list[Any], now_ms: bytes) -> None:
        """Every record of a decoded change of ``shape``'s table (a delete's tombstone too,
        with ``kafka.tombstones_on_delete``)."""
        topic = self.topics[shape.oid]
        counts = self.counts
        for op, key, value in self.writer.encode(msg, shape, lsn, now_ms):
            out.append((topic, key, value, ANY_PARTITION))
            if op == "d" and self.tombstones:
                out.append((topic, key, None, ANY_PARTITION))
            counted = (shape.oid, op)
            counts[counted] = counts.get(counted, 0) + 1


def _value(before: bytes, after: bytes, source: bytes, op: bytes, now_ms: bytes) -> bytes:
    return (b'{"before":' + before + b',"after":' + after + b',"source":' + source
            + b',"op":"' + op + b'","ts_ms":' + now_ms + b',"transaction":null}')
