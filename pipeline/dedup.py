"""Durable deduplication: drop a change the sinks already applied, count what was dropped.

The identity of a change is (source name, table, primary key, :class:`ChangePosition`). The
seen-set keeps **one entry per row**, not one per change: the row's recent applied positions
(newest last, at most ``positions_per_row``) and the source time of the newest. Because one
row's positions strictly increase, that is enough to sort every event into a
:class:`Verdict`:

* ``NEW``: newer than anything applied for the row; process it.
* ``DUPLICATE``: this exact change was applied (its position is kept); drop it (``dropped``).
* ``STALE``: older than what the row holds but not a known duplicate: a late event, or a
  replay older than the positions kept. Applying it cannot change what the sinks should hold
  (and Elasticsearch, once its delete tombstone is gone after ``index.gc_deletes``, would
  wrongly resurrect a deleted row), so under ``LatePolicy.APPLY_IF_NEWER`` drop it; under
  ``DEAD_LETTER`` dead-letter it with :meth:`Deduplicator.stale_error`. It is counted as
  ``stale``, never as a duplicate.

Row events behind a truncate of their table (kept as the row ``null``) are ``STALE`` too.

Call :meth:`Deduplicator.remember` only after every sink confirmed the event (not for events a
sink rejected): remembering earlier would make a crash between the two drop the retried
event as a duplicate, and it would never reach the sinks. The at-least-once gap the other way
(applied, crash, not remembered) is harmless: the sinks are idempotent.

The store is any ``MutableMapping[str, str | bytes]`` the caller injects: in production a Faust
table (changelog topic + rocksdict), so the seen-set survives a restart by construction; in
tests a dict. Keys are ``source|schema.table|key-json`` (sorted columns; source names are
Kafka topic prefixes and contain no ``|``); values ``<ts_ms>:<commit>.<lsn>,...`` in hex
(commit empty when unknown).

Window: a row's entry is dropped by :meth:`Deduplicator.evict` once its newest applied change
is older than ``window_ms`` of source time (default 24 h: far beyond any replay from a
committed offset or a confirmed slot position, and an operator resetting offsets by a day is
still covered). :meth:`~Deduplicator.evict` walks the keys (in key order on a disk store, else
a snapshot of them) a bounded number at a time: at least ``evict_batch`` per call, and as
many more as it takes, at the pace the calls come, to examine every row at least once per
quarter of the window. So a row leaves at most a quarter window late, and the seen-set holds
at most the rows of 1.25 windows however fast rows arrive (a fixed number per call would
fall behind any store gaining more rows than that between calls, and never finish a walk).

Memory is per row changed within the window, not per event: a key of ~35 bytes
(``shop|public.orders|{"id":1000000}``) and a value of ~35 bytes with one position, ~22 more
per further kept position (at most ~210 with the default 8). A million events touching a
million distinct rows: ~70 MB of keys and values in RocksDB before compression, ~200 MB in a
Python dict (measured: 204 bytes per entry); a million updates of one hot row: ~250 bytes.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from pipeline.events import ChangeEvent
from pipeline.ordering import LateEventError
from pipeline.positions import ChangePosition

DEFAULT_WINDOW_MS = 24 * 60 * 60 * 1000
#: Every row is examined for eviction at least this often per window.
SWEEPS_PER_WINDOW = 4


class Verdict(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class DedupSettings:
    """``window_ms`` of source time; positions kept per row; entries examined per evict
    at least (more when the store is large: see the module's *Window*)."""

    window_ms: int = DEFAULT_WINDOW_MS
    positions_per_row: int = 8
    evict_batch: int = 1_000

    def __post_init__(self) -> None:
        if self.window_ms < 1 or self.positions_per_row < 1 or self.evict_batch < 1:
            raise ValueError("window_ms, positions_per_row and evict_batch must be >= 1")


@dataclass(frozen=True, slots=True)
class RowRecord:
    """What the store holds for one row: applied positions (ascending) and the source time
    (ms) of the newest."""

    ts_ms: int
    positions: tuple[ChangePosition, ...]

    def encode(self) -> str:
        return f"{self.ts_ms}:" + ",".join([p.encode() for p in self.positions])

    @classmethod
    def decode(cls, raw: str | bytes) -> RowRecord:
        text = raw.decode() if isinstance(raw, bytes) else raw
        ts, _, rest = text.partition(":")
        return cls(int(ts), tuple(ChangePosition.decode(part) for part in rest.split(",")))


#: One batch's memo of the seen-set entries it read (row key -> entry, None: no entry), so
#: each row's entry and each table's truncate is read and decoded once per batch, not once
#: in :meth:`Deduplicator.classify` and again in :meth:`Deduplicator.remember`. Use a fresh
#: one per batch, whose events are all classified before any is remembered: it is exact
#: only while nobody else writes those rows (a row lives in one partition, and one
#: partition drains at a time).
Reads = dict[str, RowRecord | None]


def row_key(event: ChangeEvent) -> str:
    """``source|schema.table|key-json``; a truncate (no key) is the table's row ``null``."""
    key = orjson.dumps(event.key, option=orjson.OPT_SORT_KEYS).decode()
    return f"{event.source.name}|{event.table_id}|{key}"


class Deduplicator:
    """The seen-set over an injected store. Counters: ``dropped`` (duplicates), ``stale``,
    ``evicted``."""

    def __init__(
        self, store: MutableMapping[str, Any], settings: DedupSettings | None = None
    ) -> None:
        self.store = store
        self.settings = settings or DedupSettings()
        self.dropped = 0
        self.stale = 0
        self.evicted = 0
        self._sweep: list[str] = []
        self._cursor: str | None = None  # where a store that can scan left off
        self._last_evict_ms: int | None = None

    def classify(self, event: ChangeEvent, key: str | None = None,
                 reads: Reads | None = None) -> Verdict:
        """Sort one event (counts it: call once per event). ``key``: its :func:`row_key`,
        when the caller has it already. ``reads``: one batch's memo of the entries read
        (see :data:`Reads`)."""
        verdict = self._verdict(event, row_key(event) if key is None else key, reads)
        if verdict is Verdict.DUPLICATE:
            self.dropped += 1
        elif verdict is Verdict.STALE:
            self.stale += 1
        return verdict

    def is_duplicate(self, event: ChangeEvent) -> bool:
        """True only for a change already applied (``classify`` is ``DUPLICATE``)."""
        return self.classify(event) is Verdict.DUPLICATE

    def stale_error(self, event: ChangeEvent) -> LateEventError:
        """The error to dead-letter a ``STALE`` event with (``DEAD_LETTER`` policy)."""
        raw = self.store.get(row_key(event))
        newest = RowRecord.decode(raw) if raw is not None else None
        held = f"position {newest.positions[-1]}" if newest else "a truncate of the table"
        late_ms = max(0, newest.ts_ms - event.source.ts_ms) if newest else 0
        return LateEventError(
            f"stale: {event.table_id} position {event.position} is older than "
            f"{held} already applied for this row",
            late_ms=late_ms,
        )

    def prefetch(self, events: Iterable[tuple[ChangeEvent, str]], reads: Reads) -> None:
        """Read the entries a batch's :meth:`classify` calls will need into ``reads`` at once:
        each row's (``events``: each event with its :func:`row_key`) and each table's
        truncate. One ``get_many`` when the store has it (a disk store reads them in one
        call), else one ``get`` each."""
        wanted: dict[str, None] = {}
        for event, key in events:
            wanted[key] = None
            if event.key is not None:
                wanted[f"{event.source.name}|{event.table_id}|null"] = None
        missing = [key for key in wanted if key not in reads]
        if not missing:
            return
        get_many = getattr(self.store, "get_many", None)
        raws = (get_many(missing) if get_many is not None
                else [self.store.get(key) for key in missing])
        for key, raw in zip(missing, raws, strict=True):
            reads[key] = None if raw is None else RowRecord.decode(raw)

    def remember(self, event: ChangeEvent, key: str | None = None,
                 reads: Reads | None = None) -> None:
        """Record that every sink confirmed ``event``. Idempotent. ``key``: its
        :func:`row_key`, when the caller has it already; ``reads``: the memo its
        :meth:`classify` was given."""
        self.remember_many([(event, row_key(event) if key is None else key)], reads)

    def remember_many(self, events: Iterable[tuple[ChangeEvent, str]],
                      reads: Reads | None = None) -> None:
        """:meth:`remember` for each event (with its :func:`row_key`), in order; the store
        gets each row's final entry once, in one ``update`` (a disk store writes them in
        one batch)."""
        if reads is None:
            reads = {}
        records: dict[str, RowRecord] = {}
        for event, key in events:
            position = event.position
            ts_ms = event.source.ts_us // 1000
            old = self._record(key, reads)
            if old is None:
                record = RowRecord(ts_ms, (position,))
            else:
                if position in old.positions:
                    continue
                positions = list(old.positions)
                bisect.insort(positions, position)
                keep = tuple(positions[-self.settings.positions_per_row :])
                record = RowRecord(max(ts_ms, old.ts_ms), keep)
            reads[key] = records[key] = record
        if records:
            self.store.update({key: record.encode() for key, record in records.items()})

    def evict(self, now_ms: int) -> int:
        """Drop rows whose newest applied change is older than ``now_ms - window_ms``
        (``now_ms``: wall time, comparable with source time). Examines the next
        :meth:`_evict_budget` rows of a walk over the keys (in key order on a store that can
        scan, else a snapshot of the keys taken when the previous walk ended); returns how
        many it dropped."""
        return sum(self.evict_in_slices(now_ms, math.inf))

    def evict_in_slices(self, now_ms: int, slice_rows: float) -> Iterator[int]:
        """:meth:`evict`, one slice of at most ``slice_rows`` rows examined at a time: yields
        each slice's dropped count, so a caller can let other work run between slices (a
        pass over a store of millions of rows examines tens of thousands). Ends early when
        the walk reaches the end of the keys."""
        cutoff = now_ms - self.settings.window_ms
        left = self._evict_budget(now_ms)
        while left > 0:
            batch = int(min(left, slice_rows))
            left -= batch
            keys, walked_all = self._next_keys(batch)
            dropped = 0
            for key in keys:
                raw = self.store.get(key)
                if raw is not None and RowRecord.decode(raw).ts_ms < cutoff:
                    del self.store[key]
                    dropped += 1
            self.evicted += dropped
            yield dropped
            if walked_all:
                return

    def _next_keys(self, batch: int) -> tuple[list[str], bool]:
        """The walk's next ``batch`` keys, and whether the walk reached its end with them."""
        scan = getattr(self.store, "scan", None)
        keys = None if scan is None else scan(self._cursor, batch)
        if keys is not None:  # a store that walks in key order: no snapshot of every key
            self._cursor = keys[-1] if len(keys) == batch else None
            return keys, self._cursor is None
        if not self._sweep:
            self._sweep = list(self.store.keys())
            self._sweep.reverse()  # pop() from the end walks in store order
        keys = [self._sweep.pop() for _ in range(min(batch, len(self._sweep)))]
        return keys, not self._sweep

    def _evict_budget(self, now_ms: int) -> int:
        """Rows to examine in this call: ``evict_batch``, or more when that is too few to
        walk the whole store once per quarter window at the pace the calls come."""
        last, self._last_evict_ms = self._last_evict_ms, now_ms
        floor = self.settings.evict_batch
        if last is None or now_ms <= last:
            return floor
        quarter = self.settings.window_ms / SWEEPS_PER_WINDOW
        return max(floor, math.ceil(len(self.store) * min(1.0, (now_ms - last) / quarter)))

    def _record(self, key: str, reads: Reads | None) -> RowRecord | None:
        """The row's entry: from ``reads`` when this batch read it already, else from the
        store (and noted in ``reads``)."""
        if reads is not None and key in reads:
            return reads[key]
        raw = self.store.get(key)
        record = None if raw is None else RowRecord.decode(raw)
        if reads is not None:
            reads[key] = record
        return record

    def _verdict(self, event: ChangeEvent, key: str, reads: Reads | None) -> Verdict:
        position = event.position
        record = self._record(key, reads)
        if record is not None:
            if position in record.positions:
                return Verdict.DUPLICATE
            if position < record.positions[-1]:
                return Verdict.STALE
        if event.key is not None:
            truncated = self._record(f"{event.source.name}|{event.table_id}|null", reads)
            if truncated is not None and position < truncated.positions[-1]:
                return Verdict.STALE
        return Verdict.NEW
