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
- ``HELD``: a record past a gap, or of a partition not assigned here. It is kept back (up to
  ``max_held`` per partition) until the gap is settled.

Offsets can be missing from the log itself: transaction markers (one after each transaction
of an exactly-once producer) and compacted keys. So a gap is settled against the log
(:meth:`due` says which range to look at, :meth:`settle` takes the offsets the log holds
there): if the log holds nothing the framework did not deliver, the held records are
released in order and no seek is needed; otherwise the partition is re-read from the first
missing record (the caller seeks) and the held records after it come again in their turn.
A partition whose fetched end stays past the expected offset for ``stall_s`` while nothing
arrives (the worker idle at each look) is looked at the same way: it catches a skipped record
that no later record reveals.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

TP = TypeVar("TP")
T = TypeVar("T")


class Admission(enum.Enum):
    TAKE = "take"
    REPEAT = "repeat"
    HELD = "held"


@dataclass(slots=True)
class _Partition(Generic[T]):
    next: int | None  # the next offset to take; None until the first record sets it
    last_take: float  # monotonic seconds
    held: dict[int, T] = field(default_factory=dict)  # offset -> record, past a gap
    gap: bool = False
    reread_until: float = 0.0  # a re-read is in flight until then
    behind_since: float | None = None  # first seen short of the fetched end, while idle


@dataclass(frozen=True, slots=True)
class Settled(Generic[T]):
    """What settling a gap decided: records to process now (in offset order), and the
    offset to seek back to when the framework skipped a record the log holds."""

    release: list[T]
    seek_to: int | None


class OffsetContinuity(Generic[TP, T]):
    """Per-partition next offsets and held records (pure logic; the caller does the I/O)."""

    def __init__(self, stall_s: float = 2.0, reread_timeout_s: float = 10.0,
                 max_held: int = 10_000) -> None:
        if stall_s <= 0 or reread_timeout_s <= 0 or max_held < 1:
            raise ValueError("stall_s and reread_timeout_s must be > 0, max_held >= 1")
        self.stall_s = stall_s
        self.reread_timeout_s = reread_timeout_s
        self.max_held = max_held
        self._parts: dict[TP, _Partition[T]] = {}

    def assigned(self, tp: TP, next_offset: int | None, now: float) -> None:
        """The partition is ours from ``next_offset`` (the committed offset; None when
        unknown, and then the first record delivered sets it). A partition still held (no
        revocation in between) keeps its position."""
        if tp in self._parts and self._parts[tp].next is not None:
            return
        start = next_offset if next_offset is not None and next_offset >= 0 else None
        self._parts[tp] = _Partition(start, now)

    def revoked(self, tp: TP) -> None:
        self._parts.pop(tp, None)

    def expected(self, tp: TP) -> int | None:
        part = self._parts.get(tp)
        return None if part is None else part.next

    def admit(self, tp: TP, offset: int, item: T, now: float) -> Admission:
        part = self._parts.get(tp)
        if part is None:  # not (or no longer) assigned here: a stale delivery
            return Admission.HELD
        if part.next is None or offset == part.next:
            part.next = offset + 1
            part.last_take = now
            part.gap = False
            part.reread_until = 0.0
            part.behind_since = None
            part.held.pop(offset, None)
            return Admission.TAKE
        if offset < part.next:
            return Admission.REPEAT
        if len(part.held) < self.max_held or offset in part.held:
            part.held[offset] = item  # beyond the bound it comes again after the re-read
        part.gap = True
        return Admission.HELD

    def admit_run(self, tp: TP, first: int, last: int, now: float) -> bool:
        """Take the records ``first..last`` (consecutive offsets of ``tp``) at once, when
        each would be a ``TAKE``: the run starts at the expected offset. The state is then
        what :meth:`admit` record by record leaves; otherwise nothing changes and False
        says to admit them one at a time."""
        part = self._parts.get(tp)
        if part is None or (part.next is not None and first != part.next):
            return False
        part.next = last + 1
        part.last_take = now
        part.gap = False
        part.reread_until = 0.0
        part.behind_since = None
        if part.held:
            for offset in range(first, last + 1):
                part.held.pop(offset, None)
        return True

    def due(self, now: float, highwater: Callable[[TP], int | None]
            ) -> list[tuple[TP, int, int]]:
        """Partitions to settle now, each with the range ``[start, until]`` of offsets to ask
        the log about: where a gap showed (up to the last record held), and where a partition
        stalled short of its fetched end; none with a re-read still in flight."""
        out: list[tuple[TP, int, int]] = []
        for tp, part in self._parts.items():
            if part.next is None or now < part.reread_until:
                continue
            if part.gap and part.held:
                out.append((tp, part.next, max(part.held)))
                continue
            end = highwater(tp)
            if end is None or end <= part.next:
                part.behind_since = None
                continue
            if part.behind_since is None:  # a burst just fetched looks the same at first
                part.behind_since = now
            elif (now - part.behind_since >= self.stall_s
                  and now - part.last_take >= self.stall_s):
                out.append((tp, part.next, end - 1))
        return out

    def settle(self, tp: TP, start: int, until: int, log_offsets: Sequence[int],
               now: float) -> Settled[T]:
        """``log_offsets``: the offsets the log holds in ``[start, until]``, ascending."""
        part = self._parts.get(tp)
        if part is None or part.next != start:  # revoked or moved on meanwhile
            return Settled([], None)
        release: list[T] = []
        seek_to: int | None = None
        for offset in sorted(set(log_offsets) | {o for o in part.held if o <= until}):
            item = part.held.pop(offset, None) if offset >= start else None
            if item is None:  # in the log, never delivered: the framework skipped it
                seek_to = offset
                break
            release.append(item)
        part.gap = False
        part.last_take = now
        part.behind_since = None
        if seek_to is None:
            part.next = max(part.next, until + 1)
            part.held = {o: i for o, i in part.held.items() if o > until}
            part.gap = bool(part.held)
        else:
            part.next = seek_to
            part.held.clear()  # the re-read delivers them again
            part.reread_until = now + self.reread_timeout_s
        return Settled(release, seek_to)

    def drop_held(self) -> None:
        """Let go of every held record (a rebalance starts: the framework waits for the
        records it handed out, and the new assignment re-reads from the committed offsets)."""
        for part in self._parts.values():
            part.held.clear()
            part.gap = False

    def partitions(self) -> Iterable[TP]:
        return self._parts.keys()
