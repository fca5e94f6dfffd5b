"""The change event: one committed row change, in a Debezium-compatible envelope.

Kafka record key   = the primary-key columns, e.g. ``{"id": 42}``.
Kafka record value = ``{"before", "after", "source", "op", "ts_ms", "ts_us", "transaction"}``
with ``op`` one of c (create), u (update), d (delete), r (read: snapshot), t (truncate).
This is what Debezium's JsonConverter writes with ``schemas.enable=false``; a Debezium consumer
reads our raw topics, and our workers read Debezium's (with or without the schema wrapper).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.errors import EventDecodeError, NotARowChange

#: What stands in for a value PostgreSQL did not send (an unchanged TOASTed column).
#: Same text as Debezium's default ``unavailable.value.placeholder``; sinks must never
#: store it over a real value.
UNAVAILABLE_VALUE = "__debezium_unavailable_value"
#: The placeholder of a binary (``bytea``) column: Debezium sends the placeholder's bytes,
#: which JSON carries in base64.
UNAVAILABLE_BINARY = "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ=="


def is_unavailable(value: Any) -> bool:
    """True for either placeholder of a value PostgreSQL did not send."""
    return value in (UNAVAILABLE_VALUE, UNAVAILABLE_BINARY)

OPS = frozenset({"c", "u", "d", "r", "t"})

Row = dict[str, Any]

#: Key of ``ChangeEvent.extra``: column name -> its Kafka Connect field schema, present when
#: the record carried its schema (Debezium's JsonConverter with ``schemas.enable=true``).
COLUMN_TYPES = "column_types"


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """Where and when a change happened (the envelope's ``source`` block)."""

    connector: str
    name: str
    db: str
    schema: str
    table: str
    ts_us: int
    tx_id: int | None = None
    lsn: int | None = None
    commit_lsn: int | None = None
    snapshot: str = "false"

    @property
    def ts_ms(self) -> int:
        return self.ts_us // 1000

    @property
    def sequence(self) -> str | None:
        """Debezium's ``sequence``: a JSON array text of [last commit LSN, this LSN]."""
        if self.lsn is None:
            return None
        last = None if self.commit_lsn is None else str(self.commit_lsn)
        return orjson.dumps([last, str(self.lsn)]).decode()

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": "cdc-pipeline",
            "connector": self.connector,
            "name": self.name,
            "ts_ms": self.ts_ms,
            "ts_us": self.ts_us,
            "snapshot": self.snapshot,
            "db": self.db,
            "sequence": self.sequence,
            "schema": self.schema,
            "table": self.table,
            "txId": self.tx_id,
            "lsn": self.lsn,
            "xmin": None,
        }


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One row change. ``key`` holds the primary-key columns (None only for truncate)."""

    op: str
    key: Row | None
    before: Row | None
    after: Row | None
    source: SourceInfo
    ts_ms: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def table_id(self) -> str:
        """``schema.table``, the name configuration uses for a table."""
        return f"{self.source.schema}.{self.source.table}"

    @property
    def version(self) -> int:
        """A number that grows with every change of one row, used by sinks to refuse stale
        writes: the change's LSN (two transactions that touch the same row are serialised by
        its row lock, so the later change always has the higher LSN). Never a timestamp: two
        changes of one row within one microsecond would collide."""
        lsn = self.source.lsn
        if lsn is None:  # decode refuses such events; an event built in code must set it
            raise ValueError(f"change event of {self.table_id} has no source.lsn")
        return lsn

    @property
    def row(self) -> Row | None:
        """The current image of the row: ``after``, or ``before`` for a delete."""
        return self.after if self.after is not None else self.before


def encode_key(event: ChangeEvent) -> bytes | None:
    return None if event.key is None else orjson.dumps(event.key)


def envelope(event: ChangeEvent) -> dict[str, Any]:
    """The record value as plain data (any wire format encodes this)."""
    return {
        "before": event.before,
        "after": event.after,
        "source": event.source.to_dict(),
        "op": event.op,
        "ts_ms": event.ts_ms,
        "transaction": None,
    }


def encode_value(event: ChangeEvent) -> bytes:
    return orjson.dumps(envelope(event))


def _unwrap(doc: Any) -> Any:
    """Accept JsonConverter output with ``schemas.enable=true`` too: {"schema", "payload"}."""
    if isinstance(doc, dict) and "payload" in doc and "schema" in doc and len(doc) == 2:
        return doc["payload"]
    return doc


def _column_types(doc: Any) -> dict[str, dict[str, Any]]:
    """The row columns' schemas from a ``{"schema", "payload"}`` record, else nothing."""
    schema = doc.get("schema") if isinstance(doc, dict) and "payload" in doc else None
    if not isinstance(schema, dict):
        return {}
    for image in schema.get("fields") or []:
        if isinstance(image, dict) and image.get("field") in ("after", "before"):
            columns = image.get("fields") or []
            return {c["field"]: c for c in columns if isinstance(c, dict) and "field" in c}
    return {}


def _optional_row(value: Any, name: str) -> Row | None:
    if value is None or isinstance(value, dict):
        return value
    raise EventDecodeError(f"'{name}' must be an object or null, got {type(value).__name__}")


def _optional_int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _source_from_dict(src: Any) -> SourceInfo:
    if not isinstance(src, dict):
        raise EventDecodeError("'source' block is missing or not an object")
    try:
        ts_us = src.get("ts_us")
        if ts_us is None:
            ts_us = int(src.get("ts_ms") or 0) * 1000
        commit_lsn = None
        sequence = src.get("sequence")
        if isinstance(sequence, str) and sequence.startswith("["):
            parts = orjson.loads(sequence)
            if parts and parts[0] is not None:
                commit_lsn = int(parts[0])
        return SourceInfo(
            connector=str(src.get("connector") or ""),
            name=str(src.get("name") or ""),
            db=str(src.get("db") or ""),
            schema=str(src.get("schema") or ""),
            table=str(src["table"]),
            ts_us=int(ts_us),
            tx_id=_optional_int(src.get("txId")),
            lsn=_optional_int(src.get("lsn")),
            commit_lsn=commit_lsn,
            snapshot=str(src.get("snapshot") or "false"),
        )
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
        raise EventDecodeError(f"'source' block is malformed: {exc}") from exc


def decode(key: bytes | None, value: bytes | None) -> ChangeEvent | None:
    """Read one raw-topic record. Returns None for a tombstone (null value).

    Raises NotARowChange for a valid record that is no row change (a logical decoding
    message, ``op: m``), EventDecodeError, with the reason, for anything else that is not a
    change event.
    """
    if value is None:
        return None
    try:
        record = orjson.loads(value)
        doc = _unwrap(record)
        key_doc = _unwrap(orjson.loads(key)) if key else None
    except orjson.JSONDecodeError as exc:
        raise EventDecodeError(f"not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise EventDecodeError(f"value must be a JSON object, got {type(doc).__name__}")
    op = doc.get("op")
    if op == "m":
        raise NotARowChange("message")
    if op not in OPS:
        raise EventDecodeError(f"'op' must be one of c, u, d, r, t; got {op!r}")
    if key_doc is not None and not isinstance(key_doc, dict):
        raise EventDecodeError(f"key must be a JSON object, got {type(key_doc).__name__}")
    if key_doc is None and op != "t":
        raise EventDecodeError(f"op '{op}' needs a record key with the primary-key columns")
    event = ChangeEvent(
        op=op,
        key=key_doc,
        before=_optional_row(doc.get("before"), "before"),
        after=_optional_row(doc.get("after"), "after"),
        source=_source_from_dict(doc.get("source")),
        ts_ms=int(doc.get("ts_ms") or 0),
        extra={COLUMN_TYPES: types} if (types := _column_types(record)) else {},
    )
    if event.source.lsn is None:
        raise EventDecodeError(
            "'source.lsn' is missing: the workers order, deduplicate and version changes by "
            "their source position, never by time (this pipeline reads PostgreSQL changes)"
        )
    if op in ("c", "u", "r") and event.after is None:
        raise EventDecodeError(f"op '{op}' needs an 'after' image")
    if op == "d" and event.before is None and event.key is None:
        raise EventDecodeError("op 'd' needs a 'before' image or a key")
    return event
