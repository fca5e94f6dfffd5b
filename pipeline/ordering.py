"""Watermark ordering: put each raw-topic partition's events back into source order.

One capture process writes a partition in commit order, but replays and a second producer can
deliver events twice or out of order. A :class:`ReorderBuffer` (one per partition;
:class:`PartitionReorderer` keeps one per partition id) holds events sorted by
:class:`ChangePosition` and releases them in that order once the partition's *watermark* has
passed them: the watermark is the newest source time seen on the partition minus the allowed
lateness.

Lateness is measured in **source time** (``source.ts_us``, the commit time), not in positions.
A PostgreSQL position is a byte offset in the WAL: "100 kB late" depends on row widths and on
every other table's traffic, so nobody can choose it. "500 ms late" is what a user can reason
about, and because it is source time (not wall-clock time) a worker catching up on a backlog
releases at the speed it reads, without waiting.

An event behind the position already released is *late*; :class:`LatePolicy` decides:

* ``APPLY_IF_NEWER``: hand it on at once (``Release.late``); the sinks refuse anything older
  than what they hold (Elasticsearch external versions, and the deduplicator's ``STALE``).
* ``DEAD_LETTER``: hand it back with a :class:`LateEventError` (``Release.dead``) for the
  dead-letter topic. Ask the deduplicator first: a late *duplicate* (a replay after a capture
  restart) is dropped, not dead-lettered.

Bounds: a partition that received nothing for ``idle_flush_ms`` (wall time, passed in) is
flushed by :meth:`ReorderBuffer.flush_idle`, and a partition never holds more than
``max_buffered`` events: the oldest leave early (counted as ``forced``). Both move the
released position ahead of the watermark, so an event arriving after them behind that
position is late even if it was within the allowed lateness.

Wiring, per partition: ``add`` each event, then ``release()``; send ``ready + late`` through
``Deduplicator.classify`` (``NEW`` to the sinks, then ``remember`` once they confirmed;
``DUPLICATE`` dropped; ``STALE`` dropped or dead-lettered per the policy); for each ``dead``
entry, drop it if ``Deduplicator.is_duplicate``, else dead-letter it with its error.

Items still in a buffer are not processed: the caller must not commit their Kafka offsets.
When a partition is revoked, drop its buffer (:meth:`PartitionReorderer.discard`); the new
owner reads those events again. Everything here is pure: no clock, no sleeping, no asyncio.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, NamedTuple, TypeVar

from pipeline.errors import BadDataError
from pipeline.events import ChangeEvent
from pipeline.positions import ChangePosition

T = TypeVar("T")
P = TypeVar("P", bound=Hashable)


class LatePolicy(Enum):
    """What happens to an event that arrives behind the position already released."""

    APPLY_IF_NEWER = "apply_if_newer"
    DEAD_LETTER = "dead_letter"


class LateEventError(BadDataError):
    """An event arrived behind its partition's released position (``DEAD_LETTER`` policy)."""

    stage = "ordering"

    def __init__(self, message: str, *, late_ms: int) -> None:
        self.late_ms = late_ms
        super().__init__(message)


class Buffered(NamedTuple, Generic[T]):
    """An event and the caller's payload for it (for example the raw Kafka record)."""

    event: ChangeEvent
    item: T


class DeadLetter(NamedTuple, Generic[T]):
    """A late event under ``DEAD_LETTER``, with the error to dead-letter it with."""

    entry: Buffered[T]
    error: LateEventError


@dataclass(slots=True)
class Release(Generic[T]):
    """What leaves a buffer in one call.

    ``ready``: in source order (non-decreasing position); to dedup, then the sinks.
    ``late``: behind the released position, ``APPLY_IF_NEWER``; to dedup, then the sinks.
    ``dead``: behind the released position, ``DEAD_LETTER``; duplicates aside, dead-letter.
    """

    ready: list[Buffered[T]] = field(default_factory=list)
    late: list[Buffered[T]] = field(default_factory=list)
    dead: list[DeadLetter[T]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.ready or self.late or self.dead)


@dataclass(frozen=True, slots=True)
class OrderingSettings:
    """``allowed_lateness_ms`` of source time; ``idle_flush_ms`` of wall time."""

    allowed_lateness_ms: int = 1_000
    idle_flush_ms: int = 2_000
    max_buffered: int = 10_000
    late_policy: LatePolicy = LatePolicy.APPLY_IF_NEWER

    def __post_init__(self) -> None:
        if self.allowed_lateness_ms < 0 or self.idle_flush_ms < 0:
            raise ValueError("allowed_lateness_ms and idle_flush_ms must be >= 0")
        if self.max_buffered < 1:
            raise ValueError("max_buffered must be >= 1")


class ReorderBuffer(Generic[T]):
    """The reorder buffer of one partition.

    Call :meth:`add` for each event, then :meth:`release` (after each batch) and, from a timer,
    :meth:`flush_idle`. Counters: ``released`` (left in order, forced and flushed included),
    ``forced`` (left early because the buffer was full), ``flushed`` (left by an idle flush),
    ``late`` (arrived behind the released position).
    """

    def __init__(self, settings: OrderingSettings | None = None) -> None:
        self.settings = settings or OrderingSettings()
        # Held events sorted by position; ties (a primary-key change) in arrival order. A
        # deque, not a heap: a partition arrives in order almost always, so an event is
        # appended and leaves from the front, one comparison each (a heap paid ~20
        # comparisons per event, a third of the worker's CPU in a backlog).
        self._held: deque[tuple[ChangePosition, Buffered[T]]] = deque()
        self._newest_ts_us: int | None = None
        self._released_at: ChangePosition | None = None
        self._last_add_ms: int | None = None
        self._out: Release[T] = Release()
        self.released = 0
        self.forced = 0
        self.flushed = 0
        self.late = 0

    def __len__(self) -> int:
        """Events held back (at most ``max_buffered``)."""
        return len(self._held)

    @property
    def watermark_us(self) -> int | None:
        """Source time (µs) up to which events are released; None before the first event."""
        if self._newest_ts_us is None:
            return None
        return self._newest_ts_us - self.settings.allowed_lateness_ms * 1000

    @property
    def released_position(self) -> ChangePosition | None:
        """The position of the last event released in order; anything behind it is late."""
        return self._released_at

    def add(self, event: ChangeEvent, item: T, now_ms: int) -> None:
        """Take one event (``now_ms``: wall time, for the idle flush)."""
        self._last_add_ms = now_ms
        ts_us = event.source.ts_us
        if self._newest_ts_us is None or ts_us > self._newest_ts_us:
            self._newest_ts_us = ts_us
        position = event.position
        entry = Buffered(event, item)
        if self._released_at is not None and position < self._released_at:
            self._late(entry, position)
            return
        held = self._held
        if not held or not position < held[-1][0]:
            held.append((position, entry))
        else:
            self._insert(position, entry)
        if len(held) > self.settings.max_buffered:
            self._pop()
            self.forced += 1

    def release(self) -> Release[T]:
        """Everything at or below the watermark, in source order, plus the late events."""
        watermark = self.watermark_us
        held = self._held
        while held and held[0][1].event.source.ts_us <= (watermark or 0):
            self._pop()
        return self._take()

    def flush_idle(self, now_ms: int) -> Release[T]:
        """If nothing arrived for ``idle_flush_ms``, release everything held, in order."""
        idle = self._last_add_ms is not None and (
            now_ms - self._last_add_ms >= self.settings.idle_flush_ms
        )
        if idle:
            self.flushed += len(self._held)
            while self._held:
                self._pop()
        return self._take()

    def _insert(self, position: ChangePosition, entry: Buffered[T]) -> None:
        """An event behind the newest held one: after every held event not above it."""
        held = self._held
        low, high = 0, len(held)
        while low < high:
            middle = (low + high) // 2
            if position < held[middle][0]:
                high = middle
            else:
                low = middle + 1
        held.insert(low, (position, entry))

    def _pop(self) -> None:
        position, entry = self._held.popleft()
        self._released_at = position
        self._out.ready.append(entry)
        self.released += 1

    def _take(self) -> Release[T]:
        out, self._out = self._out, Release()
        return out

    def _late(self, entry: Buffered[T], position: ChangePosition) -> None:
        self.late += 1
        if self.settings.late_policy is LatePolicy.APPLY_IF_NEWER:
            self._out.late.append(entry)
            return
        assert self._newest_ts_us is not None and self._released_at is not None
        late_ms = (self._newest_ts_us - entry.event.source.ts_us) // 1000
        message = (
            f"late by {late_ms} ms of source time (allowed lateness "
            f"{self.settings.allowed_lateness_ms} ms): {entry.event.table_id} position "
            f"{position} arrived after position {self._released_at} was released"
        )
        self._out.dead.append(DeadLetter(entry, LateEventError(message, late_ms=late_ms)))


class PartitionReorderer(Generic[P, T]):
    """One :class:`ReorderBuffer` per partition id ``P`` (for example Faust's ``TP``),
    created on first use, all with the same settings; ``T`` is the caller's payload."""

    def __init__(self, settings: OrderingSettings | None = None) -> None:
        self.settings = settings or OrderingSettings()
        self._buffers: dict[P, ReorderBuffer[T]] = {}
        self._retired = {"released": 0, "forced": 0, "flushed": 0, "late": 0}

    def buffer(self, partition: P) -> ReorderBuffer[T]:
        found = self._buffers.get(partition)
        if found is None:
            found = self._buffers[partition] = ReorderBuffer(self.settings)
        return found

    def add(self, partition: P, event: ChangeEvent, item: T, now_ms: int) -> None:
        self.buffer(partition).add(event, item, now_ms)

    def release(self, partition: P) -> Release[T]:
        return self.buffer(partition).release()

    def flush_idle(self, now_ms: int) -> dict[P, Release[T]]:
        """Flush every idle partition; returns only the partitions that released something."""
        flushed = {p: b.flush_idle(now_ms) for p, b in self._buffers.items()}
        return {p: out for p, out in flushed.items() if out}

    def discard(self, partition: P) -> None:
        """Forget a revoked partition's buffer (its events will be read again by the new
        owner, since their offsets were never committed)."""
        gone = self._buffers.pop(partition, None)
        if gone is not None:  # keep the totals monotonic for metrics
            for name in self._retired:
                self._retired[name] += getattr(gone, name)

    def counters(self) -> dict[str, int]:
        """Totals since start (discarded partitions included): released, forced, flushed,
        late; and ``buffered``, the events held now."""
        totals = {
            name: base + sum(getattr(b, name) for b in self._buffers.values())
            for name, base in self._retired.items()
        }
        totals["buffered"] = sum(len(b) for b in self._buffers.values())
        return totals
