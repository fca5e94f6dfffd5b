"""The change event: one committed row change, in a Debezium-compatible envelope.

Kafka record key   = the primary-key columns, e.g. ``{"id": 42}``.
Kafka record value = ``{"before", "after", "source", "op", "ts_ms", "ts_us", "transaction"}``
with ``op`` one of c (create), u (update), d (delete), r (read: snapshot), t (truncate).
This is what Debezium's JsonConverter writes with ``schemas.enable=false``; a Debezium consumer
reads our raw topics, and our workers read Debezium's (with or without the schema wrapper).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.errors import EventDecodeError, NotARowChange
from pipeline.positions import ChangePosition

log = logging.getLogger(__name__)

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

#: The index version of every snapshot read (``op: r``): below any streamed change.
SNAPSHOT_VERSION = 0


def snapshot_marker(first_overall: bool, last_overall: bool, first_in_table: bool,
                    last_in_table: bool) -> str:
    """Debezium's ``source.snapshot`` of one snapshot read, from where it sits."""
    if first_overall:
        return "first"
    if last_overall:
        return "last"
    if first_in_table:
        return "first_in_data_collection"
    if last_in_table:
        return "last_in_data_collection"
    return "true"


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
    #: :attr:`position`, once asked for (the reorder buffer, the deduplicator and the
    #: worker each need it; not an ``__init__`` argument, so ``replace`` recomputes it)
    _position: ChangePosition | None = field(default=None, init=False, compare=False,
                                             repr=False)

    @property
    def position(self) -> ChangePosition:
        """Where this change ranks among its row's changes (``ChangePosition.of``)."""
        position = self._position
        if position is None:
            position = ChangePosition.of(self)
            object.__setattr__(self, "_position", position)
        return position

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
        if self.op == "r":
            # A snapshot read ranks below every streamed change of its row (see
            # pipeline.positions.ChangePosition): the lowest version there is.
            return SNAPSHOT_VERSION
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
    """The row columns' schemas from a ``{"schema", "payload"}`` record, else nothing.
    Each must say its ``field`` and ``type`` as strings (arrays their ``items`` likewise):
    the search sink decides its mapping from them."""
    schema = doc.get("schema") if isinstance(doc, dict) and "payload" in doc else None
    if not isinstance(schema, dict):
        return {}
    images = schema.get("fields")
    if not isinstance(images, list):
        return {}
    for image in images:
        if isinstance(image, dict) and image.get("field") in ("after", "before"):
            where = f"schema.fields[{image['field']}].fields"
            columns = image.get("fields")
            if not isinstance(columns, list):
                raise _bad(where, "must be a list of column schemas", columns)
            types = {}
            for i, column in enumerate(columns):
                if not isinstance(column, dict) or not isinstance(column.get("field"), str):
                    raise _bad(f"{where}[{i}]", "must be an object naming its 'field'", column)
                _check_column_type(column, f"{where}[{i}]")
                types[column["field"]] = column
            return types
    return {}


def _check_column_type(column: dict[str, Any], where: str) -> None:
    for _ in range(MAX_SCHEMA_DEPTH):
        if not isinstance(column.get("type"), str):
            raise _bad(f"{where}.type", "must be a string", column.get("type"))
        items = column.get("items")
        if items is None:
            return
        if not isinstance(items, dict):
            raise _bad(f"{where}.items", "must be a column schema", items)
        column, where = items, f"{where}.items"
    raise EventDecodeError(f"'{where}' nests arrays deeper than {MAX_SCHEMA_DEPTH}")


#: Positions (LSNs) must fit an Elasticsearch external version (a signed 64-bit integer);
#: PostgreSQL reaches 2^63 only after writing 8 EiB of WAL.
MAX_POSITION = 2**63 - 1
#: Times are milliseconds since 1970 up to the end of year 9999 (what a datetime can hold).
MAX_TS_MS = 253_402_300_799_999
_MAX_TS_US = MAX_TS_MS * 1000 + 999
_MAX_TS_NS = MAX_TS_MS * 1_000_000 + 999_999
#: A record key (the primary-key columns as JSON) longer than this is refused: PostgreSQL
#: keeps index entries under ~2.7 kB, so a longer key is not a row's, and every stage (the
#: dedup changelog, Redis keys) would carry it.
MAX_KEY_BYTES = 64 * 1024
#: How deep a column's Kafka Connect schema may nest arrays (``items``).
MAX_SCHEMA_DEPTH = 16


def _bad(name: str, problem: str, value: Any) -> EventDecodeError:
    return EventDecodeError(f"'{name}' {problem}, got {_short(value, 80)}")


def _optional_row(value: Any, name: str) -> Row | None:
    if value is None or isinstance(value, dict):
        return value
    raise EventDecodeError(f"'{name}' must be an object or null, got {type(value).__name__}")


def _optional_int(value: Any, name: str, high: int, low: int = 0) -> int | None:
    """An integer field: null, or a JSON whole number within [low, high] (never a bool, a
    fraction or a string: those are not what any writer of the envelope sends)."""
    if value is None:
        return None
    if type(value) is not int or not low <= value <= high:
        raise _bad(name, f"must be a whole number from {low} to {high} or null", value)
    return value


def _optional_str(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _bad(name, "must be a string or null", value)


def _name(value: Any, name: str) -> str:
    if isinstance(value, str) and value:
        return value
    raise _bad(name, "must be a non-empty string", value)


def _sequence_commit(sequence: Any) -> int | None:
    """The commit position in Debezium's ``sequence``: the text of a JSON array
    ``[last commit LSN, this LSN]``, each a decimal string (or null: unknown). Both known
    is checked inline (a worker decodes every record); the rest by
    :func:`_checked_sequence_commit`."""
    if type(sequence) is str and len(sequence) <= 100:
        try:
            parts = orjson.loads(sequence)
        except orjson.JSONDecodeError:
            parts = None
        if type(parts) is list and len(parts) == 2:
            commit, lsn = parts
            if (type(commit) is str and commit.isascii() and commit.isdigit()
                    and type(lsn) is str and lsn.isascii() and lsn.isdigit()
                    and int(commit) <= MAX_POSITION and int(lsn) <= MAX_POSITION):
                return int(commit)
    return _checked_sequence_commit(sequence)


def _checked_sequence_commit(sequence: Any) -> int | None:
    name = "source.sequence"
    if sequence is None:
        return None
    if not isinstance(sequence, str) or len(sequence) > 100:
        raise _bad(name, "must be the text of a JSON array [commit, lsn] or null", sequence)
    try:
        parts = orjson.loads(sequence)
    except orjson.JSONDecodeError:
        raise _bad(name, "must be the text of a JSON array [commit, lsn]", sequence) from None
    if not isinstance(parts, list) or len(parts) != 2:
        raise _bad(name, "must be the text of a JSON array [commit, lsn]", sequence)
    positions = []
    for part in parts:
        if isinstance(part, str) and part.isascii() and part.isdigit():
            part = int(part)
        positions.append(_optional_int(part, name, MAX_POSITION))
    return positions[0]


def _times_us(block: dict[str, Any], name: str) -> int:
    """``ts_us`` if present, else ``ts_ms`` in microseconds, else 0."""
    ts_ms, ts_us, ts_ns = block.get("ts_ms"), block.get("ts_us"), block.get("ts_ns")
    if not ((ts_ms is None or (type(ts_ms) is int and 0 <= ts_ms <= MAX_TS_MS))
            and (ts_us is None or (type(ts_us) is int and 0 <= ts_us <= _MAX_TS_US))
            and (ts_ns is None or (type(ts_ns) is int and 0 <= ts_ns <= _MAX_TS_NS))):
        # (checked inline above, as a worker decodes every record; these say what is wrong)
        _optional_int(ts_ms, f"{name}ts_ms", MAX_TS_MS)
        _optional_int(ts_us, f"{name}ts_us", _MAX_TS_US)
        _optional_int(ts_ns, f"{name}ts_ns", _MAX_TS_NS)
    if ts_us is not None:
        return int(ts_us)
    return (ts_ms or 0) * 1000


def _source_from_dict(src: Any) -> SourceInfo:
    """The ``source`` block. What every writer of the envelope sends is checked inline (a
    worker decodes every record); anything else takes :func:`_checked_source`, whose
    checks name the field and the problem."""
    if type(src) is not dict:
        return _checked_source(src)
    get = src.get
    version, xmin, snapshot = get("version"), get("xmin"), get("snapshot")
    connector, name, db, schema, table = (
        get("connector"), get("name"), get("db"), get("schema"), get("table"))
    tx_id, lsn = get("txId"), get("lsn")
    if not ((version is None or type(version) is str)
            and (xmin is None or (type(xmin) is int and 0 <= xmin <= MAX_POSITION))
            and type(snapshot) is str and type(connector) is str and type(name) is str
            and type(db) is str and type(schema) is str and schema != ""
            and type(table) is str and table != ""
            and (tx_id is None or (type(tx_id) is int and 0 <= tx_id <= MAX_POSITION))
            and (lsn is None or (type(lsn) is int and 0 <= lsn <= MAX_POSITION))):
        return _checked_source(src)
    return SourceInfo(connector, name, db, schema, table, _times_us(src, "source."), tx_id, lsn,
                      _sequence_commit(get("sequence")), snapshot or "false")


def _checked_source(src: Any) -> SourceInfo:
    if not isinstance(src, dict):
        raise EventDecodeError("'source' block is missing or not an object")
    _optional_str(src.get("version"), "source.version")
    _optional_int(src.get("xmin"), "source.xmin", MAX_POSITION)
    snapshot = src.get("snapshot")
    if isinstance(snapshot, bool):  # Debezium before 1.0 wrote a boolean
        snapshot = str(snapshot).lower()
    return SourceInfo(
        connector=_optional_str(src.get("connector"), "source.connector") or "",
        name=_optional_str(src.get("name"), "source.name") or "",
        db=_optional_str(src.get("db"), "source.db") or "",
        schema=_name(src.get("schema"), "source.schema"),
        table=_name(src.get("table"), "source.table"),
        ts_us=_times_us(src, "source."),
        tx_id=_optional_int(src.get("txId"), "source.txId", MAX_POSITION),
        lsn=_optional_int(src.get("lsn"), "source.lsn", MAX_POSITION),
        commit_lsn=_sequence_commit(src.get("sequence")),
        snapshot=_optional_str(snapshot, "source.snapshot") or "false",
    )


def _same(a: Any, b: Any) -> bool:
    """JSON equality: 1, 1.0 and true are three different values."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict | list):
        return orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
            b, option=orjson.OPT_SORT_KEYS)
    return bool(a == b)


def _check_key(key: Row, image: Row | None, image_name: str) -> None:
    """The key names the row the image is of: every key column the image holds (not as the
    unchanged-TOAST placeholder) has the key's value. For ``after`` every key column must be
    there: a full image always has them."""
    if not key:
        raise EventDecodeError("key {} names no primary-key column: it is no row's key")
    if image is None:
        return
    for column, value in key.items():
        if column not in image:
            if image_name == "after":
                raise EventDecodeError(
                    f"key column '{column}' is missing from '{image_name}': the key and the "
                    f"row image must name the same row")
            continue
        held = image[column]
        if not is_unavailable(held) and not _same(value, held):
            raise _bad(f"{image_name}.{column}",
                       f"disagrees with the key's value {_short(value)}: the key and the row "
                       f"image must name the same row", held)


def _short(value: Any, limit: int = 40) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


def decode(key: bytes | None, value: bytes | None) -> ChangeEvent | None:
    """Read one raw-topic record. Returns None for a tombstone (null value).

    Raises NotARowChange for a valid record that is no row change (a logical decoding
    message, ``op: m``), EventDecodeError, with the reason and the field it concerns, for
    anything else that is not a change event. Every field a stage reads is checked here:
    a record that passes cannot make a later stage raise.
    """
    if value is None:
        return None
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise EventDecodeError(f"value is not valid JSON: {exc}") from exc
    try:
        key_doc = _unwrap(orjson.loads(key)) if key else None
    except orjson.JSONDecodeError as exc:
        raise EventDecodeError(f"key is not valid JSON: {exc}") from exc
    doc = _unwrap(record)
    if not isinstance(doc, dict):
        raise EventDecodeError(f"value must be a JSON object, got {type(doc).__name__}")
    op = doc.get("op")
    if op == "m":
        raise NotARowChange("message")
    if not isinstance(op, str) or op not in OPS:
        raise _bad("op", "must be one of c, u, d, r, t", op)
    if key_doc is not None and not isinstance(key_doc, dict):
        raise EventDecodeError(f"key must be a JSON object, got {type(key_doc).__name__}")
    if op == "t":
        key_doc = None  # a truncate is of the table, not of a row: any key is ignored
    elif key_doc is None:
        raise EventDecodeError(f"op '{op}' needs a record key with the primary-key columns")
    elif key is not None and len(key) > MAX_KEY_BYTES:
        raise EventDecodeError(
            f"key is {len(key)} bytes, more than {MAX_KEY_BYTES}: no primary key is that long")
    transaction = doc.get("transaction")
    if transaction is not None and not isinstance(transaction, dict):
        raise _bad("transaction", "must be an object or null", transaction)
    ts_us = _times_us(doc, "")
    event = ChangeEvent(
        op=op,
        key=key_doc,
        before=_optional_row(doc.get("before"), "before"),
        after=_optional_row(doc.get("after"), "after"),
        source=_source_from_dict(doc.get("source")),
        ts_ms=ts_us // 1000,
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
    if key_doc is not None:
        if op == "d":
            _check_key(key_doc, event.before, "before")
        else:
            _check_key(key_doc, event.after, "after")
    return event


def unreadable(exc: Exception) -> EventDecodeError:
    """Decoding is a pure function of a record's bytes, which anyone who can write to a raw
    topic chooses: whatever it raises that decode did not foresee is still that record's
    bad data (dead-lettered, logged with its traceback as a decoder bug), never a reason to
    stop the worker and with it every other record."""
    log.error("decoding a record raised %s: dead-lettering it", type(exc).__name__,
              exc_info=exc)
    error = EventDecodeError(f"unreadable record ({type(exc).__name__}: {exc})")
    error.__cause__ = exc
    return error
