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

The commit part may be unknown: Debezium writes ``sequence: [null, lsn]`` for the first
transaction after a restart. Unknown is not zero. One row's changes follow commit order by
their own LSN (a second transaction cannot change the row before the first commits, it waits
on the row lock), so where either commit is unknown two positions compare by LSN alone.
"""

from __future__ import annotations

from dataclasses import dataclass
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

    def _key(self, other: ChangePosition) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        mine, theirs = int(not self.snapshot), int(not other.snapshot)
        if self.commit is None or other.commit is None:
            return (mine, 0, self.lsn), (theirs, 0, other.lsn)
        return (mine, self.commit, self.lsn), (theirs, other.commit, other.lsn)

    def __lt__(self, other: ChangePosition) -> bool:
        mine, theirs = self._key(other)
        return mine < theirs

    def __le__(self, other: ChangePosition) -> bool:
        mine, theirs = self._key(other)
        return mine <= theirs

    def __gt__(self, other: ChangePosition) -> bool:
        return other < self

    def __ge__(self, other: ChangePosition) -> bool:
        return other <= self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChangePosition):
            return NotImplemented
        mine, theirs = self._key(other)
        return mine == theirs

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
