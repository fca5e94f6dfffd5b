"""Offset continuity: a worker takes every record of a partition, in offset order, once.

A consumer framework can lose a record between the broker and the agent without anyone
noticing. faust-streaming does, around a rebalance or a restart: a record fetched while its
flow control is paused, or under an older generation, is skipped (and acknowledged on the
agent's behalf), and a record behind its read offset is dropped. The next commit then moves
past the record. That is silent loss, the one thing a CDC pipeline may never do.

:class:`OffsetContinuity` knows, per partition, the next offset the worker must take (the
group's committed offset at assignment, then one past each record taken). It sorts every
record the framework delivers:

- ``TAKE``: the expected record; process it.
- ``REPEAT``: a record already taken, delivered again after a seek; processing it again is
  harmless (deduplication drops it, the sinks are idempotent).
- ``HELD``: a record past a gap (or of a partition not assigned here). Neither process nor
  acknowledge it: the partition is re-read from the expected offset (:meth:`due`), and the
  record comes again in its turn.

A gap can also be the log's own (compacted keys, transaction markers). The re-read settles it:
the caller asks Kafka for the first record at or after the expected offset and reports it
with :meth:`skip_to` before seeking. A partition whose fetched end is past the expected
offset while nothing arrives for ``stall_s`` is re-read the same way: it catches a skipped
record that no later record reveals.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

TP = TypeVar("TP")


class Admission(enum.Enum):
    TAKE = "take"
    REPEAT = "repeat"
    HELD = "held"


@dataclass(slots=True)
class _Partition:
    next: int | None  # the next offset to take; None until known
    last_take: float  # monotonic seconds
    gap: bool = False  # a record past ``next`` was delivered
    reread_until: float = 0.0  # a re-read is in flight until then


class OffsetContinuity(Generic[TP]):
    """Per-partition next offsets (pure logic; the caller does the Kafka I/O)."""

    def __init__(self, stall_s: float = 5.0, reread_timeout_s: float = 10.0) -> None:
        if stall_s <= 0 or reread_timeout_s <= 0:
            raise ValueError("stall_s and reread_timeout_s must be > 0")
        self.stall_s = stall_s
        self.reread_timeout_s = reread_timeout_s
        self._parts: dict[TP, _Partition] = {}
        self.held = 0  # records held back past a gap (a counter, for metrics)

    def assigned(self, tp: TP, next_offset: int | None, now: float) -> None:
        """The partition is ours from ``next_offset`` (the committed offset; None when the
        group has none, and then the first record delivered sets it). A partition still held
        (no revocation in between) keeps its position."""
        if tp in self._parts and self._parts[tp].next is not None:
            return
        start = next_offset if next_offset is not None and next_offset >= 0 else None
        self._parts[tp] = _Partition(start, now)

    def revoked(self, tp: TP) -> None:
        self._parts.pop(tp, None)

    def expected(self, tp: TP) -> int | None:
        part = self._parts.get(tp)
        return None if part is None else part.next

    def admit(self, tp: TP, offset: int, now: float) -> Admission:
        part = self._parts.get(tp)
        if part is None:  # not (or no longer) assigned here: a stale delivery
            self.held += 1
            return Admission.HELD
        if part.next is None or offset == part.next:
            part.next = offset + 1
            part.last_take = now
            part.gap = False
            part.reread_until = 0.0
            return Admission.TAKE
        if offset < part.next:
            return Admission.REPEAT
        part.gap = True
        self.held += 1
        return Admission.HELD

    def due(self, now: float, highwater: Callable[[TP], int | None]) -> list[tuple[TP, int]]:
        """Partitions to re-read now, each with the offset to re-read from: those where a
        gap showed, and those stalled short of their fetched end; none with a re-read still
        in flight."""
        out: list[tuple[TP, int]] = []
        for tp, part in self._parts.items():
            if part.next is None or now < part.reread_until:
                continue
            if part.gap:
                out.append((tp, part.next))
                continue
            end = highwater(tp)
            if end is not None and end > part.next and now - part.last_take >= self.stall_s:
                out.append((tp, part.next))
        return out

    def skip_to(self, tp: TP, offset: int) -> bool:
        """The log holds no record in ``[expected, offset)``: move past it. True if it moved."""
        part = self._parts.get(tp)
        if part is None or part.next is None or offset <= part.next:
            return False
        part.next = offset
        return True

    def rereading(self, tp: TP, now: float) -> None:
        """A seek back to the expected offset was made; wait for it before another."""
        part = self._parts.get(tp)
        if part is not None:
            part.gap = False
            part.last_take = now
            part.reread_until = now + self.reread_timeout_s

    def partitions(self) -> Iterable[TP]:
        return self._parts.keys()
