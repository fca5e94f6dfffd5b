"""XA transactions: held from ``XA PREPARE`` until the binlog says how they ended.

MariaDB (10.5 and later) and MySQL binlog an XA transaction's changes when it is prepared,
as an event group of its own (MariaDB: a GTID event flagged ``FL_PREPARED_XA``, the rows
events, ``XA END``, an XA_PREPARE event; MySQL: GTID, ``XA START``, rows, ``XA END``,
XA_PREPARE), and its outcome later, in a group of its own: ``XA COMMIT X'..',X'..',n`` or
``XA ROLLBACK X'..',X'..',n``. Publishing at PREPARE, as Debezium does, publishes changes
that a rollback then undoes; a sink would keep rows that never existed.

Capture holds a prepared transaction's records until its ``XA COMMIT`` (published then) or
``XA ROLLBACK`` (dropped). While one is held, every checkpoint is the position just before
the earliest held group: a restart reads that group again, and publishes again what came
after it (at-least-once), so a crash never loses a held transaction. The XA locks keep
other writers off its rows until the outcome, so publishing at the outcome keeps each row's
order.

A prepared transaction of more than ``mysql.xa_held_records`` records is published as it is
read, as Debezium does, with a warning: memory stays bounded, and only its rollback, should
it come, would be wrong.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.capture.source import Checkpoint
from pipeline.positions import BinlogPosition

log = logging.getLogger(__name__)

#: An XA transaction's id as the binlog has it: formatID, gtrid, bqual (bytes: any value).
Xid = tuple[int, bytes, bytes]

#: MariaDB's GTID flag of an XA transaction's prepared part.
FL_PREPARED_XA = 64
#: Seconds a transaction may stay prepared before capture says it holds the position back.
UNDECIDED_WARN_S = 300.0

_OUTCOME = re.compile(
    r"\s*XA\s+(COMMIT|ROLLBACK)\s+X'([0-9A-Fa-f]*)'\s*,\s*X'([0-9A-Fa-f]*)'\s*,\s*(\d+)\s*$",
    re.IGNORECASE)


def outcome(query: str) -> tuple[bool, Xid] | None:
    """``(committed, xid)`` of an ``XA COMMIT``/``XA ROLLBACK`` statement as binlogged; None
    for any other statement (``XA COMMIT ... ONE PHASE`` is binlogged as a transaction)."""
    match = _OUTCOME.match(query)
    if match is None:
        return None
    verb, gtrid, bqual, format_id = match.groups()
    return verb.upper() == "COMMIT", (int(format_id), bytes.fromhex(gtrid),
                                      bytes.fromhex(bqual))


def describe(xid: Xid) -> str:
    """The id as ``XA RECOVER FORMAT='SQL'`` shows it, to paste into XA COMMIT/ROLLBACK."""
    format_id, gtrid, bqual = xid
    return f"X'{gtrid.hex()}',X'{bqual.hex()}',{format_id}"


@dataclass
class _Group:
    """A prepared part being read, or read and held."""

    start: BinlogPosition  # where a restart must begin to read it again
    items: list[Any] = field(default_factory=list)  # its records (and signal rows)
    published: bool = False  # over the limit: published as read
    prepared_at: float = 0.0


class PreparedTransactions:
    """The XA transactions of the stream between their PREPARE and their outcome."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._reading: _Group | None = None
        self._held: dict[Xid, _Group] = {}
        #: Published as read (over the limit), outcome still to come.
        self._published: set[Xid] = set()
        self._warned_at = 0.0

    @property
    def reading(self) -> bool:
        return self._reading is not None

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def begin(self, start: BinlogPosition) -> None:
        """A prepared part starts at ``start`` (the position before its group)."""
        if self._reading is None or self._reading.start != start:
            self._reading = _Group(start, published=self.limit == 0)

    def take(self, items: list[Any]) -> list[Any]:
        """What to pass on of ``items``, decoded from the prepared part being read: nothing
        (its records are held, its checkpoints would point inside it) unless it grew past
        the limit, when all it held so far and the rest go out as read."""
        group = self._reading
        assert group is not None
        if group.published:
            return items
        group.items.extend(i for i in items if type(i) is not Checkpoint)
        if len(group.items) <= self.limit:
            return []
        log.warning("an XA transaction starting at %s holds more than %d records "
                    "(mysql.xa_held_records): publishing it as it is read, before its XA "
                    "COMMIT or ROLLBACK; should it be rolled back, its changes stay published. "
                    "Raise mysql.xa_held_records to hold larger ones", group.start, self.limit)
        group.published = True
        out, group.items = group.items, []
        return out

    def prepared(self, xid: Xid, one_phase: bool) -> list[Any]:
        """The part read ends with its XA_PREPARE event: held, or (``XA COMMIT ... ONE
        PHASE`` on MySQL: committed) its records, to publish now."""
        group, self._reading = self._reading, None
        if group is None or group.published:
            if group is not None and not one_phase:
                self._published.add(xid)
            return []
        if one_phase:
            return group.items
        group.prepared_at = time.monotonic()
        self._held[xid] = group
        return []

    def decided(self, committed: bool, xid: Xid) -> list[Any]:
        """An ``XA COMMIT`` (its held records, to publish now) or ``XA ROLLBACK`` (dropped)."""
        group = self._held.pop(xid, None)
        if group is not None:
            return group.items if committed else []
        if xid in self._published:
            self._published.discard(xid)
            if not committed:
                log.warning("XA transaction %s was rolled back after its changes were "
                            "published (it held more than mysql.xa_held_records records); "
                            "the sinks keep them until the rows change again, or until "
                            "`cdc verify --repair`", describe(xid))
            return []
        if committed:
            log.warning("XA COMMIT of %s, prepared before the position capture started "
                        "from: if capture started (or took its snapshot) after its XA "
                        "PREPARE, its changes are not captured; `cdc snapshot start` its "
                        "tables to read them", describe(xid))
        return []

    def hold(self, items: list[Any]) -> list[Any]:
        """``items`` with every checkpoint moved back to before the earliest held group."""
        earliest = min(self._held.values(), key=lambda g: g.start)
        now = time.monotonic()
        if now - earliest.prepared_at > UNDECIDED_WARN_S and now - self._warned_at > 60:
            self._warned_at = now
            xid = next(x for x, g in self._held.items() if g is earliest)
            log.warning("XA transaction %s has been prepared for %.0f s without XA COMMIT or "
                        "XA ROLLBACK: capture's saved position stays at %s until it ends, and "
                        "a restart reads the binlog again from there. `XA RECOVER FORMAT='SQL'` "
                        "lists it", describe(xid), now - earliest.prepared_at, earliest.start)
        return [Checkpoint(earliest.start, i.commit_ts_us) if type(i) is Checkpoint else i
                for i in items]
