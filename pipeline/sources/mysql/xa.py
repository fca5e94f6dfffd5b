"""XA transactions: held from ``XA PREPARE`` until the binlog says how they ended.

MariaDB (10.5 and later) and MySQL binlog an XA transaction's changes when it is prepared,
as an event group of its own (MariaDB: a GTID event flagged ``FL_PREPARED_XA``, the rows
events, ``XA END``, an XA_PREPARE event; MySQL: GTID, ``XA START``, rows, ``XA END``,
XA_PREPARE), and its outcome later, in a group of its own: ``XA COMMIT X'..',X'..',n`` or
``XA ROLLBACK X'..',X'..',n``. Publishing at PREPARE, as Debezium does, publishes changes
that a rollback then undoes; a sink would keep rows that never existed.

Capture holds a prepared transaction's changes (as decoded rows, not yet records) until its
``XA COMMIT``, when they are published as committed there (``source.sequence[0]``, the
commit the workers order by, is the COMMIT's; each change keeps its own ``lsn``, the search
index's version), or its ``XA ROLLBACK``, when they are dropped. While one is held, every
checkpoint is the position just before the earliest held group: a restart reads that group
again, and publishes again what came after it (at-least-once), so a crash never loses a
held transaction. The XA locks keep other writers off its rows until the outcome, so
publishing at the outcome keeps each row's order. A prepared transaction that changed no
captured table holds nothing back.

A prepared transaction of more than ``mysql.xa_held_records`` rows is published as it is
read, as Debezium does, with a warning: memory stays bounded, and only its rollback, should
it come, would be wrong (it is logged). So is one a restart resumes in the middle of (its
first part was published before the restart).
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
    entries: list[Any] = field(default_factory=list)  # its decoded rows (and signal rows)
    size: int = 0  # rows held
    published: bool = False  # over the limit (or resumed inside): published as read
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
    def publishing(self) -> bool:
        """The part being read goes out as read (over the limit, or resumed inside)."""
        return self._reading is not None and self._reading.published

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def begin(self, start: BinlogPosition, resumed_inside: bool = False) -> None:
        """A prepared part starts at ``start`` (the position before its group);
        ``resumed_inside``: a restart begins inside it, after records already published."""
        if self._reading is None or self._reading.start != start:
            self._reading = _Group(start, published=self.limit == 0 or resumed_inside)

    def take(self, entries: list[Any], size: int) -> list[Any]:
        """What to publish now of ``entries`` (``size`` rows), decoded from the prepared part
        being read: nothing while it is held, all it held so far once it grows past the
        limit, then each as read."""
        group = self._reading
        assert group is not None
        if group.published:
            return entries
        group.entries.extend(entries)
        group.size += size
        if group.size <= self.limit:
            return []
        log.warning("an XA transaction starting at %s holds more than %d rows "
                    "(mysql.xa_held_records): publishing it as it is read, before its XA "
                    "COMMIT or ROLLBACK; should it be rolled back, its changes stay published. "
                    "Raise mysql.xa_held_records to hold larger ones", group.start, self.limit)
        group.published = True
        out, group.entries = group.entries, []
        return out

    def prepared(self, xid: Xid, one_phase: bool) -> list[Any]:
        """The part read ends with its XA_PREPARE event: held, or (``XA COMMIT ... ONE
        PHASE`` on MySQL: committed) its entries, to publish now."""
        group, self._reading = self._reading, None
        if group is None or group.published:
            if group is not None and not one_phase:
                self._published.add(xid)
            return []
        if one_phase:
            return group.entries
        if not group.entries:  # no change of a captured table: nothing to wait for
            return []
        group.prepared_at = time.monotonic()
        self._held[xid] = group
        return []

    def decided(self, committed: bool, xid: Xid) -> list[Any]:
        """An ``XA COMMIT`` (its held entries, to publish now) or ``XA ROLLBACK`` (dropped)."""
        group = self._held.pop(xid, None)
        if group is not None:
            return group.entries if committed else []
        if xid in self._published:
            self._published.discard(xid)
            if not committed:
                log.warning("XA transaction %s was rolled back after its changes were "
                            "published (it held more than mysql.xa_held_records rows, or a "
                            "restart resumed inside it); the sinks keep them until the rows "
                            "change again, or until `cdc verify --repair`", describe(xid))
            return []
        # Prepared before the position this run started from (published before a restart,
        # or before capture's snapshot: see the README), or it changed no captured table.
        log.info("XA %s of %s: capture did not read its prepared part",
                 "COMMIT" if committed else "ROLLBACK", describe(xid))
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
