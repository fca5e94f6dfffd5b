"""Decoder for PostgreSQL's ``pgoutput`` logical replication messages (protocol version 1).

Each payload that a logical replication slot hands out (one ``XLogData`` body from a
walsender, or one ``data`` row of ``pg_logical_slot_get_binary_changes``) is exactly one
message; :func:`decode_message` turns it into one of the frozen dataclasses below.
Reference: "Logical Replication Message Formats" in the PostgreSQL manual (chapter 55.9 in
PostgreSQL 15). Protocol version 1 has no streaming or two-phase messages, so no message
carries a transaction id except ``Begin``.

Tuple values stay exactly as the server sent them: ``str`` for the text format (the default),
``bytes`` for the binary format (option ``binary 'true'``), ``None`` for SQL NULL and
:data:`UNCHANGED_TOAST` for a TOASTed value the update did not touch (the server does not
send it again). Turning text into typed values is :mod:`pipeline.sources.postgres.values`' job.

:class:`RelationCache` keeps the ``Relation`` and ``Type`` messages a stream has sent so that
row messages, which only carry a relation OID, can be interpreted.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeAlias, final

from pipeline.positions import Lsn

__all__ = [
    "UNCHANGED_TOAST",
    "Begin",
    "Column",
    "Commit",
    "Delete",
    "Insert",
    "Message",
    "Origin",
    "PgoutputDecodeError",
    "PgoutputMessage",
    "Relation",
    "RelationCache",
    "Truncate",
    "TupleValue",
    "Type",
    "UnchangedToast",
    "UnknownRelationError",
    "Update",
    "decode_message",
    "take_replaced_values",
]

#: Microseconds from the Unix epoch (1970-01-01) to PostgreSQL's epoch (2000-01-01).
PG_EPOCH_OFFSET_US: Final = 946_684_800_000_000


@final
class UnchangedToast:
    """Type of :data:`UNCHANGED_TOAST`; there is exactly one instance."""

    __slots__ = ()
    _instance: ClassVar[UnchangedToast | None] = None

    def __new__(cls) -> UnchangedToast:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self) -> str:
        # Pickle/copy by name so that the copy *is* the module's singleton.
        return "UNCHANGED_TOAST"


#: Stands for a column whose value is an unchanged, out-of-line (TOASTed) value: PostgreSQL
#: does not send such a value in an update's new tuple. It is *not* NULL: the column still
#: holds its previous value, which the receiver does not know.
UNCHANGED_TOAST: Final = UnchangedToast()

#: One column value of a tuple, as sent (``bytes`` only when the binary format was asked for).
TupleValue: TypeAlias = None | UnchangedToast | str | bytes
Tuple: TypeAlias = tuple[TupleValue, ...]


class PgoutputDecodeError(ValueError):
    """A payload is not a valid pgoutput (v1) message: truncated, unknown type or garbage."""


class UnknownRelationError(PgoutputDecodeError):
    """A row message named a relation OID for which no ``Relation`` message has been seen."""


@dataclass(frozen=True, slots=True)
class Begin:
    """Start of a transaction. ``final_lsn`` is the LSN of its commit record."""

    final_lsn: Lsn
    #: Commit time, microseconds since the Unix epoch (UTC).
    commit_ts_us: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """End of a transaction. ``end_lsn`` is where to resume (confirm it once the tx is safe)."""

    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    #: Commit time, microseconds since the Unix epoch (UTC).
    commit_ts_us: int


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a :class:`Relation`."""

    #: True when the column is part of the replica identity (usually the primary key).
    is_key: bool
    name: str
    type_oid: int
    #: ``atttypmod``: e.g. ``varchar(20)`` -> 24, ``numeric(10,2)`` -> 655366, -1 for none.
    type_modifier: int


@dataclass(frozen=True, slots=True)
class Relation:
    """A table's shape, sent before the first change of it in each stream and after it is
    altered. Later row messages refer to it by ``oid`` only."""

    oid: int
    #: Schema name as sent; the protocol sends ``''`` for ``pg_catalog``.
    namespace: str
    name: str
    #: Replica identity setting: ``'d'`` default (primary key), ``'n'`` nothing,
    #: ``'f'`` full (all columns), ``'i'`` a chosen unique index.
    replica_identity: str
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class Type:
    """A user-defined type (enum, domain, composite...) used by a column of a relation
    about to be sent. Built-in types never get one."""

    oid: int
    #: Schema name as sent; ``''`` stands for ``pg_catalog``.
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    """A new row."""

    relation_oid: int
    new: Tuple


@dataclass(frozen=True, slots=True)
class Update:
    """A changed row.

    ``old`` is sent only when the replica identity changed (``old_kind == 'K'``: only the key
    columns carry values, the others are ``None``) or when the table has REPLICA IDENTITY
    FULL (``old_kind == 'O'``: the whole old row). Otherwise both are ``None``.
    """

    relation_oid: int
    old: Tuple | None
    old_kind: str | None
    new: Tuple


@dataclass(frozen=True, slots=True)
class Delete:
    """A deleted row: ``old`` holds the key columns (``'K'``) or the whole row (``'O'``)."""

    relation_oid: int
    old: Tuple
    old_kind: str


@dataclass(frozen=True, slots=True)
class Truncate:
    """``TRUNCATE`` of one or more tables (one message for all tables of the statement)."""

    relation_oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class Message:
    """A ``pg_logical_emit_message()`` payload (sent when the ``messages`` option is on).

    A transactional message arrives inside its transaction's Begin/Commit, a
    non-transactional one on its own as soon as it is decoded (even if the tx rolls back).
    """

    transactional: bool
    lsn: Lsn
    prefix: str
    content: bytes


@dataclass(frozen=True, slots=True)
class Origin:
    """The transaction was replayed from another node (replication origin ``name``); sent
    right after its :class:`Begin`. ``commit_lsn`` is the commit LSN on that origin."""

    commit_lsn: Lsn
    name: str


PgoutputMessage: TypeAlias = (
    Begin | Commit | Relation | Type | Insert | Update | Delete | Truncate | Message | Origin
)

# --- decoding --------------------------------------------------------------------------------
# Every decoder takes the payload (bytes) and the offset just after the message type byte, and
# returns the message. Integers are big-endian ("network order").

_U8: Final = struct.Struct("!B")
_I16: Final = struct.Struct("!h")
_I32: Final = struct.Struct("!i")
_U32: Final = struct.Struct("!I")
_BEGIN: Final = struct.Struct("!QqI")  # final LSN, commit ts, xid
_COMMIT: Final = struct.Struct("!BQQq")  # flags, commit LSN, end LSN, commit ts
_ORIGIN_LSN: Final = struct.Struct("!Q")
_MESSAGE_HEAD: Final = struct.Struct("!BQ")  # flags, LSN
_COLUMN_TAIL: Final = struct.Struct("!Ii")  # type OID, type modifier
_TRUNCATE_HEAD: Final = struct.Struct("!IB")  # number of relations, option bits

_TRUNCATE_CASCADE: Final = 1
_TRUNCATE_RESTART_IDENTITY: Final = 2
_MESSAGE_TRANSACTIONAL: Final = 1
_COLUMN_IS_KEY: Final = 1

# Tuple column kinds, as integers because indexing bytes yields ints.
_KIND_NULL: Final = ord("n")
_KIND_TOAST: Final = ord("u")
_KIND_TEXT: Final = ord("t")
_KIND_BINARY: Final = ord("b")
_TUPLE_NEW: Final = ord("N")
_TUPLE_KEY: Final = ord("K")
_TUPLE_OLD: Final = ord("O")


class _Truncated(Exception):
    """Internal: the payload ended before ``offset + need`` bytes."""

    def __init__(self, offset: int, need: int) -> None:
        self.offset = offset
        self.need = need


def _cstring(buf: bytes, off: int) -> tuple[str, int]:
    """Read a NUL-terminated UTF-8 string at ``off`` (a name, or a message's prefix); return
    it and the offset after the NUL. A ``SQL_ASCII`` database's names may hold any bytes:
    each that is not UTF-8 is read as U+FFFD, as in values (refusing it would stop the
    stream at the same message after every restart)."""
    end = buf.find(b"\x00", off)
    if end < 0:
        raise PgoutputDecodeError(f"unterminated string starting at offset {off}")
    return buf[off:end].decode(errors="replace"), end + 1


#: Column values of the last decoded message read with U+FFFD in place of bytes that are not
#: UTF-8. Only a ``SQL_ASCII`` database sends such bytes (PostgreSQL
#: converts every other encoding to the session's UTF-8); refusing them would stop capture on
#: every restart, so they are replaced, as Debezium does (Java decodes them the same way).
_replaced_values = 0


def take_replaced_values() -> int:
    """How many column values of the message :func:`decode_message` decoded last had bytes
    that are not UTF-8 (read once: a second call returns 0)."""
    global _replaced_values
    count, _replaced_values = _replaced_values, 0
    return count


def _replaced(data: bytes) -> str:
    global _replaced_values
    _replaced_values += 1
    return data.decode(errors="replace")


def _u32(buf: bytes, off: int) -> int:
    """The big-endian unsigned 32-bit integer at ``off`` (IndexError past the end): read
    byte by byte, which compiled is several times cheaper than ``struct.unpack_from`` (the
    hot path reads a length per column)."""
    return (buf[off] << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3]


def _i32(buf: bytes, off: int) -> int:
    """The big-endian signed 32-bit integer at ``off``."""
    n = _u32(buf, off)
    return n - 0x100000000 if n & 0x80000000 else n


def _i16(buf: bytes, off: int) -> int:
    """The big-endian signed 16-bit integer at ``off``."""
    n = (buf[off] << 8) | buf[off + 1]
    return n - 0x10000 if n & 0x8000 else n


def _tuple(buf: bytes, off: int) -> tuple[Tuple, int]:
    """Read TupleData (column count, then per column a kind byte and maybe a value)."""
    ncols = _i16(buf, off)
    off += 2
    size = len(buf)
    values: list[TupleValue] = []
    append = values.append
    for _ in range(ncols):
        kind = buf[off]
        off += 1
        if kind == _KIND_TEXT:
            length = _i32(buf, off)
            off += 4
            end = off + length
            if end > size or length < 0:
                raise _Truncated(off, length)
            try:
                append(buf[off:end].decode())
            except UnicodeDecodeError:
                append(_replaced(buf[off:end]))
            off = end
        elif kind == _KIND_NULL:
            append(None)
        elif kind == _KIND_TOAST:
            append(UNCHANGED_TOAST)
        elif kind == _KIND_BINARY:
            length = _i32(buf, off)
            off += 4
            end = off + length
            if end > size or length < 0:
                raise _Truncated(off, length)
            append(buf[off:end])
            off = end
        else:
            raise PgoutputDecodeError(
                f"unknown tuple column kind {chr(kind)!r} (0x{kind:02x}) at offset {off - 1}"
            )
    return tuple(values), off


def _expect_tuple_tag(buf: bytes, off: int, allowed: bytes) -> int:
    tag = buf[off]
    if tag not in allowed:
        raise PgoutputDecodeError(
            f"expected tuple tag {' or '.join(repr(chr(t)) for t in allowed)} at offset {off}, "
            f"got {chr(tag)!r} (0x{tag:02x})"
        )
    return tag


def _decode_begin(buf: bytes, off: int) -> tuple[Begin, int]:
    final_lsn, ts, xid = _BEGIN.unpack_from(buf, off)
    return Begin(Lsn(final_lsn), ts + PG_EPOCH_OFFSET_US, xid), off + _BEGIN.size


def _decode_commit(buf: bytes, off: int) -> tuple[Commit, int]:
    flags, commit_lsn, end_lsn, ts = _COMMIT.unpack_from(buf, off)
    msg = Commit(flags, Lsn(commit_lsn), Lsn(end_lsn), ts + PG_EPOCH_OFFSET_US)
    return msg, off + _COMMIT.size


def _decode_origin(buf: bytes, off: int) -> tuple[Origin, int]:
    (lsn,) = _ORIGIN_LSN.unpack_from(buf, off)
    name, off = _cstring(buf, off + _ORIGIN_LSN.size)
    return Origin(Lsn(lsn), name), off


def _decode_relation(buf: bytes, off: int) -> tuple[Relation, int]:
    (oid,) = _U32.unpack_from(buf, off)
    namespace, off = _cstring(buf, off + 4)
    name, off = _cstring(buf, off)
    identity = chr(buf[off])
    (ncols,) = _I16.unpack_from(buf, off + 1)
    off += 3
    columns = []
    for _ in range(ncols):
        flags = buf[off]
        col_name, off = _cstring(buf, off + 1)
        type_oid, typmod = _COLUMN_TAIL.unpack_from(buf, off)
        off += _COLUMN_TAIL.size
        columns.append(Column(bool(flags & _COLUMN_IS_KEY), col_name, type_oid, typmod))
    return Relation(oid, namespace, name, identity, tuple(columns)), off


def _decode_type(buf: bytes, off: int) -> tuple[Type, int]:
    (oid,) = _U32.unpack_from(buf, off)
    namespace, off = _cstring(buf, off + 4)
    name, off = _cstring(buf, off)
    return Type(oid, namespace, name), off


def _decode_insert(buf: bytes, off: int) -> tuple[Insert, int]:
    oid = _u32(buf, off)
    _expect_tuple_tag(buf, off + 4, b"N")
    new, off = _tuple(buf, off + 5)
    return Insert(oid, new), off


def _decode_update(buf: bytes, off: int) -> tuple[Update, int]:
    oid = _u32(buf, off)
    off += 4
    tag = _expect_tuple_tag(buf, off, b"KON")
    old: Tuple | None = None
    old_kind: str | None = None
    if tag != _TUPLE_NEW:
        old_kind = chr(tag)
        old, off = _tuple(buf, off + 1)
        _expect_tuple_tag(buf, off, b"N")
    new, off = _tuple(buf, off + 1)
    return Update(oid, old, old_kind, new), off


def _decode_delete(buf: bytes, off: int) -> tuple[Delete, int]:
    oid = _u32(buf, off)
    tag = _expect_tuple_tag(buf, off + 4, b"KO")
    old, off = _tuple(buf, off + 5)
    return Delete(oid, old, chr(tag)), off


def _decode_truncate(buf: bytes, off: int) -> tuple[Truncate, int]:
    count, options = _TRUNCATE_HEAD.unpack_from(buf, off)
    off += _TRUNCATE_HEAD.size
    if off + 4 * count > len(buf):
        raise _Truncated(off, 4 * count)
    oids = struct.unpack_from(f"!{count}I", buf, off)
    msg = Truncate(
        oids,
        cascade=bool(options & _TRUNCATE_CASCADE),
        restart_identity=bool(options & _TRUNCATE_RESTART_IDENTITY),
    )
    return msg, off + 4 * count


def _decode_message(buf: bytes, off: int) -> tuple[Message, int]:
    flags, lsn = _MESSAGE_HEAD.unpack_from(buf, off)
    prefix, off = _cstring(buf, off + _MESSAGE_HEAD.size)
    (length,) = _I32.unpack_from(buf, off)
    off += 4
    end = off + length
    if end > len(buf) or length < 0:
        raise _Truncated(off, length)
    return Message(bool(flags & _MESSAGE_TRANSACTIONAL), Lsn(lsn), prefix, buf[off:end]), end


_DECODERS: Final[dict[int, Callable[[bytes, int], tuple[PgoutputMessage, int]]]] = {
    ord("B"): _decode_begin,
    ord("C"): _decode_commit,
    ord("O"): _decode_origin,
    ord("R"): _decode_relation,
    ord("Y"): _decode_type,
    ord("I"): _decode_insert,
    ord("U"): _decode_update,
    ord("D"): _decode_delete,
    ord("T"): _decode_truncate,
    ord("M"): _decode_message,
}

#: Message types of later protocol versions (streaming, two-phase), named in errors.
_LATER_PROTOCOL_TYPES: Final = {
    ord("S"): "Stream Start (protocol 2)",
    ord("E"): "Stream Stop (protocol 2)",
    ord("c"): "Stream Commit (protocol 2)",
    ord("A"): "Stream Abort (protocol 2)",
    ord("b"): "Begin Prepare (protocol 3)",
    ord("P"): "Prepare (protocol 3)",
    ord("K"): "Commit Prepared (protocol 3)",
    ord("r"): "Rollback Prepared (protocol 3)",
    ord("p"): "Stream Prepare (protocol 3)",
}


def decode_message(payload: bytes | bytearray | memoryview) -> PgoutputMessage:
    """Decode one pgoutput protocol-1 message.

    Pure function. Raises :class:`PgoutputDecodeError` naming the message type and offset when
    the payload is empty, truncated, has trailing bytes, or is not a protocol-1 message.
    """
    # One copy of a memoryview makes every later slice a cheap bytes slice with .decode().
    buf = payload if type(payload) is bytes else bytes(payload)
    if not buf:
        raise PgoutputDecodeError("empty pgoutput payload")
    kind = buf[0]
    global _replaced_values
    _replaced_values = 0  # counts this message's values only
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise PgoutputDecodeError(_unknown_type_text(kind))
    try:
        msg, end = decoder(buf, 1)
    # One name per clause: compiled (mypyc), a name shared by clauses keeps the first type.
    except PgoutputDecodeError as bad:
        raise PgoutputDecodeError(f"{_name(kind)} message: {bad}") from None
    except _Truncated as short:
        raise PgoutputDecodeError(
            f"{_name(kind)} message truncated: {short.need} bytes needed at offset "
            f"{short.offset}, payload is {len(buf)} bytes"
        ) from None
    except (struct.error, IndexError) as overrun:
        # struct reports the offset it wanted; an IndexError means a single byte was read
        # at the very end of the payload.
        raise PgoutputDecodeError(
            f"{_name(kind)} message truncated at offset <= {len(buf)}: {overrun}"
        ) from None
    except UnicodeDecodeError as text_error:
        raise PgoutputDecodeError(
            f"{_name(kind)} message: invalid UTF-8 text: {text_error}") from None
    if end != len(buf):
        raise PgoutputDecodeError(
            f"{_name(kind)} message has {len(buf) - end} unexpected trailing bytes at offset {end}"
        )
    return msg


def _name(kind: int) -> str:
    return f"{chr(kind)!r} (0x{kind:02x})"


def _unknown_type_text(kind: int) -> str:
    later = _LATER_PROTOCOL_TYPES.get(kind)
    if later is not None:
        return f"message type {_name(kind)} is {later}, not supported by this protocol-1 decoder"
    return f"unknown pgoutput message type {_name(kind)} at offset 0"


class RelationCache:
    """The ``Relation`` and ``Type`` messages seen on one replication stream, by OID.

    Feed every decoded message to :meth:`observe` (it ignores the others); a later Relation
    for the same OID replaces the earlier one (the table was altered, or the stream restarted).
    """

    __slots__ = ("_relations", "_types")

    def __init__(self) -> None:
        self._relations: dict[int, Relation] = {}
        self._types: dict[int, Type] = {}

    def observe(self, message: PgoutputMessage) -> None:
        """Remember ``message`` if it is a Relation or Type; ignore anything else."""
        if isinstance(message, Relation):
            self._relations[message.oid] = message
        elif isinstance(message, Type):
            self._types[message.oid] = message

    def get(self, oid: int) -> Relation:
        """The latest Relation for ``oid``; :class:`UnknownRelationError` if none was seen."""
        try:
            return self._relations[oid]
        except KeyError:
            raise UnknownRelationError(
                f"no Relation message seen for relation oid {oid}: the stream must send one "
                "before the first row of each table"
            ) from None

    def get_type(self, oid: int) -> Type | None:
        """The Type message for a user-defined type ``oid``, or None (e.g. a built-in type)."""
        return self._types.get(oid)

    def __contains__(self, oid: object) -> bool:
        return oid in self._relations

    def __len__(self) -> int:
        return len(self._relations)


# -- the capture hot path --------------------------------------------------------------------
def insert_relation_oid(buf: bytes) -> int | None:
    """The relation of an Insert message (None if ``buf`` is not one)."""
    if len(buf) < 6 or buf[0] != 0x49:  # 'I'
        return None
    return _u32(buf, 1)


def insert_row(
    buf: bytes,
    names: tuple[str, ...],
    converters: tuple[Callable[[str], Any] | None, ...],
    unchanged: Any,
) -> dict[str, Any]:
    """An Insert's new tuple straight into ``{column: converted value}``, without the
    intermediate message objects (the most frequent message of a capture).

    A converter of None keeps the text; an unchanged TOAST value becomes ``unchanged``.
    Raises PgoutputDecodeError on anything this fast path does not expect (binary values, a
    column count that differs from ``names``, truncation, a converter that raised): the
    caller then decodes the message with :func:`decode_message`, which reports the problem
    precisely, and builds the row on the general path, which publishes a value its converter
    refuses as text.
    """
    try:
        if buf[5] != _TUPLE_NEW:
            raise PgoutputDecodeError("not a new tuple")
        ncols = _i16(buf, 6)
        if ncols != len(names):
            raise PgoutputDecodeError("column count differs from the relation")
        off = 8
        row: dict[str, Any] = {}
        for i in range(ncols):
            kind = buf[off]
            off += 1
            if kind == _KIND_TEXT:
                length = _i32(buf, off)
                off += 4
                end = off + length
                if end > len(buf) or length < 0:
                    raise PgoutputDecodeError("truncated")
                text = buf[off:end].decode()
                off = end
                convert = converters[i]
                row[names[i]] = text if convert is None else convert(text)
            elif kind == _KIND_NULL:
                row[names[i]] = None
            elif kind == _KIND_TOAST:
                row[names[i]] = unchanged
            else:
                raise PgoutputDecodeError("binary or unknown column kind")
        if off != len(buf):
            raise PgoutputDecodeError("trailing bytes")
        return row
    except PgoutputDecodeError:
        raise
    except (struct.error, IndexError, UnicodeDecodeError) as overrun:
        raise PgoutputDecodeError(str(overrun)) from None
    except Exception as refused:  # noqa: BLE001 (a converter refused a value: the slow path)
        raise PgoutputDecodeError(
            f"a converter raised {type(refused).__name__}: {refused}") from None
