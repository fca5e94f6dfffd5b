"""Typed source positions: where a change sits in its source's commit order.

The kinds of position that live here:

* :class:`Lsn`, a PostgreSQL WAL position. PostgreSQL shows it as two hexadecimal halves,
  ``"16/B374D848"`` (high 32 bits, a slash, low 32 bits); on the wire and in arithmetic it is
  one unsigned 64-bit integer. It is what a replication slot confirms.
* :class:`BinlogPosition`, where a MySQL/MariaDB binlog capture resumes (file, position,
  rows events and rows already published, GTIDs); :func:`binlog_lsn` maps a binlog change
  onto the one 63-bit ``source.lsn`` the workers order by.
* :class:`ChangePosition`, the position of one change event as the workers see it:
  ``(commit, lsn)`` from the envelope's ``source.sequence`` and ``source.lsn``. Ordering,
  deduplication and the search index's version all use it, never a wall-clock time (two
  changes of one row in the same microsecond would collide and one would be dropped).
* :class:`PollPosition`, how far query-based polling got: a :class:`Watermark`
  ``(timestamp, primary key)`` per table, ordered by the number of batches polled.

The commit part may be unknown: Debezium writes ``sequence: [null, lsn]`` for the first
transaction after a restart. Unknown is not zero. One row's changes follow commit order by
their own LSN (a second transaction cannot change the row before the first commits, it waits
on the row lock), so where either commit is unknown two positions compare by LSN alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from pipeline.events import ChangeEvent

_MAX = (1 << 64) - 1
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, order=True, slots=True)
class Lsn:
    """A WAL position; ``Lsn.parse("16/B374D848")``, ``str(lsn)``, ``int(lsn)``, ordered."""

    value: int

    ZERO: ClassVar[Lsn]

    def __post_init__(self) -> None:
        if not 0 <= self.value <= _MAX:
            raise ValueError(f"LSN out of range (must fit in 64 unsigned bits): {self.value}")

    @classmethod
    def parse(cls, text: str) -> Lsn:
        """Parse PostgreSQL's ``"HIGH/LOW"`` hex form (case-insensitive, 1-8 digits each half).

        Raises ``ValueError`` naming the text when it is not a valid LSN.
        """
        high, sep, low = text.partition("/")
        if not (sep and _is_hex_half(high) and _is_hex_half(low)):
            raise ValueError(f"not an LSN (expected 'XXXXXXXX/XXXXXXXX' hex): {text!r}")
        return cls((int(high, 16) << 32) | int(low, 16))

    def __str__(self) -> str:
        return f"{self.value >> 32:X}/{self.value & 0xFFFFFFFF:X}"

    def __int__(self) -> int:
        return self.value


def _is_hex_half(part: str) -> bool:
    # int(x, 16) alone would also accept "+1", " 1", "0x1" and "1_0"; PostgreSQL does not.
    return 1 <= len(part) <= 8 and all(c in _HEX_DIGITS for c in part)


Lsn.ZERO = Lsn(0)


class ChangePosition:
    """``(commit, lsn)`` of one change; ``commit`` (the previous commit's end LSN, Debezium's
    ``sequence[0]``) may be None (unknown). ``snapshot``: a snapshot read (``op: r``).

    A snapshot read ranks below every streamed change: it is the row as of the snapshot's
    consistent point, and a transaction open across that point commits after it although its
    changes carry lower LSNs. Otherwise ordered by ``(commit, lsn)`` when both commits are
    known, else by ``lsn`` alone; equal when the LSNs are equal and the commits are equal or
    either is unknown (a replay of a change after a restart may have lost its commit, it is
    still the same change). A primary-key change yields a delete and a create that share
    one position (they are different rows).
    """

    __slots__ = ("commit", "lsn", "snapshot")

    def __init__(self, commit: int | None, lsn: int, snapshot: bool = False) -> None:
        self.commit = commit
        self.lsn = lsn
        self.snapshot = snapshot

    @classmethod
    def of(cls, event: ChangeEvent) -> ChangePosition:
        """The position of a decoded event (``decode`` guarantees it has an LSN)."""
        lsn = event.source.lsn
        if lsn is None:  # decode refuses such events; an event built in code must set it
            raise ValueError(f"change event of {event.table_id} has no source.lsn")
        return cls(event.source.commit_lsn, lsn, event.op == "r")

    def _cmp(self, other: ChangePosition) -> int:
        """-1, 0 or 1 as ``self`` ranks below, with or above ``other``. Written out rather
        than as key tuples: the reorder buffer and the deduplicator compare every event."""
        if bool(self.snapshot) != bool(other.snapshot):
            return -1 if self.snapshot else 1
        a, b = self.commit, other.commit
        if a is not None and b is not None and a != b:
            return -1 if a < b else 1
        x, y = self.lsn, other.lsn
        return 0 if x == y else (-1 if x < y else 1)

    def __lt__(self, other: ChangePosition) -> bool:
        return self._cmp(other) < 0

    def __le__(self, other: ChangePosition) -> bool:
        return self._cmp(other) <= 0

    def __gt__(self, other: ChangePosition) -> bool:
        return self._cmp(other) > 0

    def __ge__(self, other: ChangePosition) -> bool:
        return self._cmp(other) >= 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChangePosition):
            return NotImplemented
        return self._cmp(other) == 0

    def __hash__(self) -> int:
        return hash((self.snapshot, self.lsn))  # equal positions share both

    def __repr__(self) -> str:
        flag = ", snapshot=True" if self.snapshot else ""
        return f"ChangePosition({self.commit!r}, {self.lsn!r}{flag})"

    def __str__(self) -> str:
        commit = "?" if self.commit is None else _lsn_text(self.commit)
        text = f"{commit}+{_lsn_text(self.lsn)}"
        return f"snapshot@{text}" if self.snapshot else text

    def encode(self) -> str:
        """``[r]<commit hex>.<lsn hex>``, commit empty when unknown, ``r`` for a snapshot
        read (dedup's stored form)."""
        commit = "" if self.commit is None else f"{self.commit:x}"
        return f"{'r' if self.snapshot else ''}{commit}.{self.lsn:x}"

    @classmethod
    def decode(cls, text: str) -> ChangePosition:
        snapshot = text.startswith("r")
        commit, _, lsn = text[snapshot:].partition(".")
        return cls(int(commit, 16) if commit else None, int(lsn, 16), snapshot)


def _lsn_text(value: int) -> str:
    return str(Lsn(value)) if 0 <= value <= _MAX else str(value)


@dataclass(frozen=True, order=True, slots=True)
class TriggerLogPosition:
    """How far the trigger relay got in its change log: ``(horizon, sequence)``.

    The relay reads the log in *rounds*: each takes the transaction visibility horizon
    (``pg_snapshot_xmin``: every transaction below it has finished) and relays the log rows
    of transactions below it, in log-sequence order. A later round can hold lower sequence
    numbers than an earlier one (a transaction that wrote first may commit last), so the
    sequence alone does not order the relay's progress; the round's horizon, then the
    sequence within it, does. Positions live only as long as a relay session (the log
    table itself is the durable queue), so they are never stored.
    """

    horizon: int
    sequence: int

    def __str__(self) -> str:
        return f"xid<{self.horizon}#{self.sequence}"


#: A polled row's version counts microseconds from here: never negative, for any timestamp
#: Python can hold (a count from 1970 would be negative before it).
_VERSION_EPOCH = datetime(1, 1, 1, tzinfo=UTC)


#: :func:`timestamp_version` of 1970-01-01 00:00 UTC (Unix time 0).
UNIX_EPOCH_VERSION = 62_135_596_800_000_000


def timestamp_version(text: str) -> int:
    """The microseconds from 0001-01-01 of a timestamp as PostgreSQL prints it in ISO style
    with ``TimeZone=UTC`` (``2026-12-01 08:29:33.123456+00``; without a zone, read as UTC).

    It grows with the timestamp, one for one: polled changes use it as their position, so
    the search index's external version follows the order polling reads them in. 0 for what
    Python cannot hold (``-infinity``, years BC): below every real timestamp.
    """
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return 0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _VERSION_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True, slots=True)
class Watermark:
    """The last row polling published from one table: its timestamp and primary-key values,
    each as PostgreSQL prints them (handed back to PostgreSQL as they are, so the next poll
    resumes at exactly this row whatever the types and collations). ``columns`` names them
    (the timestamp column, then the key's): a watermark of other columns is no position in
    the table as it is polled now.

    Python does not order the key values (PostgreSQL's order of a text key depends on its
    collation); :class:`PollPosition` orders positions, and PostgreSQL orders rows.
    """

    columns: tuple[str, ...]
    ts: str
    key: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.columns) != 1 + len(self.key) or not self.key:
            raise ValueError(f"a watermark names its timestamp and each key column: "
                             f"{self.columns} for {len(self.key)} key values")

    @property
    def version(self) -> int:
        return timestamp_version(self.ts)

    def encode(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "ts": self.ts, "key": list(self.key)}

    @classmethod
    def decode(cls, data: dict[str, Any]) -> Watermark:
        """Raises ``ValueError`` for anything but what :meth:`encode` writes."""
        columns, ts, key = data.get("columns"), data.get("ts"), data.get("key")
        if not (isinstance(columns, list) and isinstance(ts, str) and isinstance(key, list)
                and all(isinstance(v, str) for v in (*columns, *key))):
            raise ValueError(f"not a polling watermark: {data!r}")
        return cls(tuple(columns), ts, tuple(key))


@dataclass(frozen=True, slots=True, order=True)
class PollPosition:
    """How far polling got: every table's :class:`Watermark` after ``batches`` batches.

    Ordered by ``batches``, which only grows (across restarts too: it is saved with the
    watermarks), so the capture loop confirms positions in the order they were read.
    """

    batches: int
    watermarks: dict[str, Watermark] = field(compare=False, default_factory=dict)

    def encode(self) -> dict[str, Any]:
        return {"batches": self.batches,
                "tables": {table: mark.encode() for table, mark in self.watermarks.items()}}

    @classmethod
    def decode(cls, data: dict[str, Any]) -> PollPosition:
        """Raises ``ValueError`` for anything but what :meth:`encode` writes."""
        batches, tables = data.get("batches"), data.get("tables")
        if type(batches) is not int or batches < 0 or not isinstance(tables, dict):
            raise ValueError(f"not a polling position: {data!r}")
        return cls(batches, {table: Watermark.decode(mark) for table, mark in tables.items()})


@dataclass(frozen=True, slots=True, order=True)
class SnapshotPosition:
    """How far the snapshot got: ``chunks`` read (orders positions) and the progress to save."""

    chunks: int
    progress: dict[str, Any] = field(compare=False)


@dataclass(frozen=True, order=True, slots=True)
class OutboxPosition:
    """One event of the outbox relay: its claim ``batch`` (numbered for the life of the
    process, so positions keep growing across reconnections) and its ``index`` in it. The
    durable position of the relay is the outbox table itself (an event's status); this one
    only orders what the capture loop confirms."""

    batch: int
    index: int


#: Bits of a binlog LSN given to the position inside a file (files up to 1 TiB; the
#: protocol's positions are 32-bit); the file's index takes the 23 bits above.
_BINLOG_POS_BITS = 40
_BINLOG_MAX_FILE_INDEX = (1 << (63 - _BINLOG_POS_BITS)) - 1


def binlog_file_index(file: str) -> int:
    """The number a binlog file name ends in: ``mysql-bin.000042`` -> 42."""
    _, _, suffix = file.rpartition(".")
    if not suffix.isdigit():
        raise ValueError(f"not a binlog file name (expected <base>.<number>): {file!r}")
    return int(suffix)


def binlog_lsn(file: str, event_pos: int, row: int = 0) -> int:
    """A change's ``source.lsn`` in the binlog: ``file index << 40 | (event start + row)``.

    Signed 63 bits that grow with binlog order, which is commit order: the search index's
    external version and the workers' deduplication follow it. ``row`` (the row's index in
    its rows event) is added to the event's start position: every row takes at least one
    byte of its event, so ``start + row`` stays below the next event's start.
    """
    index = binlog_file_index(file)
    if index > _BINLOG_MAX_FILE_INDEX or not 0 <= event_pos + row < (1 << _BINLOG_POS_BITS):
        raise ValueError(f"binlog position {file}:{event_pos}+{row} does not fit 63 bits")
    return (index << _BINLOG_POS_BITS) | (event_pos + row)


@dataclass(frozen=True, slots=True)
class BinlogPosition:
    """Where a binlog capture resumes: the transaction starting at ``file:pos`` (its GTID or
    BEGIN event), of which ``event`` rows events, then ``row`` rows of the next one, are
    already published. ``gtids``: MariaDB's GTID position (``domain-server-seq`` per domain)
    or MySQL's GTID set of the transactions completed before it ("" when unknown); it
    resumes the same place with ``mysql.resume_by: gtid``, on this server or a replica.

    Ordered by ``(file index, pos, event, row)``; ``gtids`` follows from those.
    """

    file: str
    pos: int
    event: int = 0
    row: int = 0
    gtids: str = ""

    def _key(self) -> tuple[int, int, int, int]:
        return binlog_file_index(self.file), self.pos, self.event, self.row

    def __lt__(self, other: BinlogPosition) -> bool:
        return self._key() < other._key()

    def __le__(self, other: BinlogPosition) -> bool:
        return self._key() <= other._key()

    def __gt__(self, other: BinlogPosition) -> bool:
        return self._key() > other._key()

    def __ge__(self, other: BinlogPosition) -> bool:
        return self._key() >= other._key()

    def __str__(self) -> str:
        inside = f"+{self.event}e{self.row}r" if self.event or self.row else ""
        gtids = f" (gtid {self.gtids})" if self.gtids else ""
        return f"{self.file}:{self.pos}{inside}{gtids}"

    def to_dict(self) -> dict[str, Any]:
        """The form kept in the offsets topic (Debezium's MySQL offset keys)."""
        return {"file": self.file, "pos": self.pos, "event": self.event, "row": self.row,
                "gtids": self.gtids}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BinlogPosition:
        """Read ``to_dict``'s form; ValueError naming what is wrong."""
        try:
            position = cls(str(data["file"]), int(data["pos"]), int(data.get("event", 0)),
                           int(data.get("row", 0)), str(data.get("gtids") or ""))
            position._key()
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a binlog position: {data!r} ({exc})") from exc
        return position
