"""The worker's processing of one sink, independent of Faust.

    raw records ─▶ decode + evolve ─▶ reorder (watermark) ─▶ dedup ─▶ sink ─▶ remember
                        │ bad data          │ late (policy)    │ duplicate: dropped
                        ▼                   ▼                  ▼
                                 dead-letter topic (acknowledged)

``accept(records)`` does the pure part (decode, evolve, check that each event is of its
topic's table, buffer for ordering) and never raises for bad data. ``drain()`` does the I/O:
it writes what the ordering released to the sink, dead-letters what cannot be processed,
remembers what the sink confirmed, and returns the records that are finished. If it raises
(a sink's permanent failure), what it was writing stays pending and the next ``drain()``
tries it again: nothing is lost or reordered.
A transient failure is retried inside the sink wrapper while the partition waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from pipeline.deadletter import DeadLetterTopic, RawRecord
from pipeline.dedup import Deduplicator, Reads, Verdict, row_key
from pipeline.errors import BadDataError, ForeignTableError, NotARowChange, RetriableError
from pipeline.events import ChangeEvent, decode, unreadable
from pipeline.metrics import Metrics
from pipeline.ordering import LatePolicy, PartitionReorderer, Release
from pipeline.positions import ChangePosition
from pipeline.retry import Backoff
from pipeline.sinks.base import TRAITS, Rejection, Sink

log = logging.getLogger(__name__)

Item = tuple[RawRecord, ChangeEvent]
#: What decoding one record gives: an event, None (a tombstone), or why it is not one.
Decoded = ChangeEvent | None | BadDataError | NotARowChange
Letter = tuple[RawRecord, str, BaseException]


def _partition_of(record: RawRecord) -> tuple[str, int]:
    return (record.topic, record.partition)


class BatchProcessor:
    def __init__(
        self,
        sinks: Sequence[Sink],
        dead_letters: DeadLetterTopic,
        metrics: Metrics,
        *,
        evolution: Any = None,
        reorderer: PartitionReorderer[tuple[str, int], RawRecord] | None = None,
        dedup: Deduplicator | None = None,
        late_policy: LatePolicy = LatePolicy.APPLY_IF_NEWER,
        partition_scope: Callable[[int], AbstractContextManager[Any]] | None = None,
        topic_tables: Mapping[str, str] | None = None,
    ) -> None:
        self.sinks = list(sinks)
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.evolution = evolution
        self.reorderer = reorderer
        self.dedup = dedup
        self.late_policy = late_policy
        # Dedup writes go to the changelog partition of the event's own partition.
        self.partition_scope = partition_scope or (lambda _p: contextlib.nullcontext())
        # Raw topic -> the table its records must be of (None: no check, tests only).
        self.topic_tables = topic_tables
        self._ready: list[Item] = []
        self._letters: list[Letter] = []
        self._done: list[RawRecord] = []
        self._stale_log = StaleLog()
        self._stale_reads_ok = bool(self.sinks) and all(
            getattr(s, "takes_stale_reads", TRAITS["takes_stale_reads"]) for s in self.sinks)

    # -- the pure part ---------------------------------------------------------------------
    def accept(self, records: Sequence[RawRecord], now_ms: int | None = None,
               decoded: Sequence[Decoded] | None = None) -> None:
        """Take records in. ``decoded``: what :meth:`decode` made of them, when the caller
        decoded them already (in a thread, while a write was in flight)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        touched: set[tuple[str, int]] = set()
        if decoded is None:
            decoded = self.decode(records)
        for record, result in zip(records, decoded, strict=True):
            if isinstance(result, BadDataError):
                self._letters.append((record, result.stage, result))
            elif isinstance(result, NotARowChange):
                self.metrics.inc("cdc_worker_skipped_total", kind=result.kind)
                self._done.append(record)
            elif result is None:
                self.metrics.inc("cdc_worker_tombstones_total")
                self._done.append(record)
            elif self.reorderer is None:
                self._ready.append((record, result))
            else:
                self.reorderer.add(_partition_of(record), result, record, now_ms)
                touched.add(_partition_of(record))
        self.metrics.inc("cdc_worker_records_total", len(records))
        if self.reorderer is not None:
            for tp in touched:
                self._collect(self.reorderer.release(tp))

    def flush_idle(self, now_ms: int | None = None) -> None:
        """Release quiet partitions' buffered events (a timer calls this)."""
        if self.reorderer is None:
            return
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        for release in self.reorderer.flush_idle(now_ms).values():
            self._collect(release)

    @property
    def pending(self) -> int:
        return len(self._ready) + len(self._letters)

    @property
    def has_work(self) -> bool:
        """Something for a drain: records to write or dead-letter, or finished ones (a
        tombstone, say) whose acknowledgement waits for a drain."""
        return bool(self._ready or self._letters or self._done)

    def decode(self, records: Sequence[RawRecord]) -> list[Decoded]:
        """What each record is (an event, a tombstone, or why it is not one). Pure: touches
        nothing of the processor's state, so it may run in a thread."""
        decoded = self._decode_records(records)
        if self.topic_tables is not None:
            for i, (record, result) in enumerate(zip(records, decoded, strict=True)):
                if isinstance(result, ChangeEvent):
                    error = foreign_table(self.topic_tables, record.topic, result)
                    if error is not None:
                        decoded[i] = error
        return decoded

    def _decode_records(self, records: Sequence[RawRecord]) -> list[Decoded]:
        if self.evolution is not None:
            return list(self.evolution.decode_batch(records))
        out: list[Decoded] = []
        for record in records:
            try:
                out.append(decode(record.key, record.value))
            except (BadDataError, NotARowChange) as exc:
                out.append(exc)
            except Exception as exc:  # noqa: BLE001 - see unreadable()
                out.append(unreadable(exc))
        return out

    def _collect(self, release: Release[RawRecord]) -> None:
        self._ready.extend((b.item, b.event) for b in release.ready)
        self._ready.extend((b.item, b.event) for b in release.late)
        for dead in release.dead:
            # A replay after a capture restart is late but already applied: drop it.
            event = dead.entry.event
            if self.dedup is not None and self.dedup.is_duplicate(event):
                self.metrics.inc("cdc_dedup_dropped_total")
                self._done.append(dead.entry.item)
            else:
                self._letters.append((dead.entry.item, "ordering", dead.error))
        if release.late:
            self.metrics.inc("cdc_worker_late_total", len(release.late))

    # -- the I/O part ----------------------------------------------------------------------
    def ready_partitions(self) -> set[tuple[str, int]]:
        """The raw partitions with events ready to be written."""
        return {_partition_of(record) for record, _ in self._ready}

    def truncate_ready(self) -> bool:
        """A truncate is ready: it must be written alone (see ``partition_groups``)."""
        return any(event.op == "t" for _, event in self._ready)

    async def drain(self, only: set[tuple[str, int]] | None = None) -> list[RawRecord]:
        """Write what is ready (of the partitions ``only``, when given), dead-letter what
        failed; returns the finished records.

        What it writes is taken at the start, so records accepted meanwhile (the engine reads
        ahead while a write is in flight) wait for the next drain; on a failure what it took
        goes back in front of them, in order. Drains of different partitions may run at once
        (a row lives in one partition)."""
        if only is None:
            ready, self._ready = self._ready, []
        else:
            ready, self._ready = _take_partitions(self._ready, only)
        if ready:
            try:
                await self._write(ready)
            except BaseException:
                self._ready = ready + self._ready
                raise
        letters, self._letters = self._letters, []
        if letters:
            try:
                await self._dead_letter(letters)
            except BaseException:
                self._letters = letters + self._letters
                raise
            self._done.extend(record for record, _, _ in letters)
        done, self._done = self._done, []
        return done

    async def process(self, records: Sequence[RawRecord]) -> list[RawRecord]:
        """accept + drain: one batch in, its finished records out."""
        self.accept(records)
        return await self.drain()

    async def _write(self, ready: list[Item]) -> None:
        dedup = self.dedup
        batch: list[Item] = []
        keys: list[str] = []  # each written event's dedup row key ("" without dedup)
        # Positions taken in this batch per row: a replay can sit in the same batch as its
        # original (a restart before the commit re-reads both), and the store learns of the
        # original only once the sinks confirm it.
        taken: dict[str, set[ChangePosition]] = {}
        reads: Reads = {}  # each row's seen-set entry, read once for classify and remember
        row_keys = [""] * len(ready)
        if dedup is not None:  # every entry the batch needs, in one read of the store
            row_keys = [row_key(event) for _, event in ready]
            dedup.prefetch(zip([event for _, event in ready], row_keys, strict=True), reads)
        for (record, event), key in zip(ready, row_keys, strict=True):
            verdict = Verdict.NEW
            if dedup is not None:
                verdict = dedup.classify(event, key, reads)
                if verdict is Verdict.NEW:
                    position = event.position
                    positions = taken.setdefault(key, set())
                    if position in positions:
                        verdict = Verdict.DUPLICATE
                    positions.add(position)
            if verdict is Verdict.STALE and event.op == "r" and self._stale_reads_ok:
                verdict = Verdict.NEW  # the sink refuses it by version, fills absent columns
            if verdict is Verdict.NEW:
                batch.append((record, event))
                keys.append(key)
            elif verdict is Verdict.DUPLICATE:
                self.metrics.inc("cdc_dedup_dropped_total")
                self._done.append(record)
            elif self.late_policy is LatePolicy.DEAD_LETTER and event.op != "r":
                # (a snapshot read older than its row is expected, never an error)
                assert dedup is not None
                self._letters.append((record, "ordering", dedup.stale_error(event)))
            else:  # stale under apply-if-newer: the sink holds newer state already
                self.metrics.inc("cdc_dedup_stale_total")
                self._stale_log.note(event)
                self._done.append(record)
        if not batch:
            return
        events = [event for _, event in batch]
        groups = partition_groups(batch)
        results = await asyncio.gather(
            *(write_per_partition(sink, events, groups) for sink in self.sinks))
        rejected: set[int] = set()
        for sink, rejections in zip(self.sinks, results, strict=True):
            for rejection in rejections:
                rejected.add(rejection.index)
                self._letters.append((batch[rejection.index][0], f"sink:{sink.name}",
                                      rejection.error))
        confirmed = [i for i in range(len(batch)) if i not in rejected]
        if dedup is not None:
            # Remember per partition (one scope each; a row lives in one partition, so
            # its changes keep their order).
            by_partition: dict[int, list[int]] = {}
            for i in confirmed:
                if batch[i][1].key is not None:
                    by_partition.setdefault(batch[i][0].partition, []).append(i)
            for partition, indexes in by_partition.items():
                with self.partition_scope(partition):
                    dedup.remember_many([(batch[i][1], keys[i]) for i in indexes], reads)
        self._done.extend(batch[i][0] for i in confirmed)

    async def _dead_letter(self, letters: list[Letter]) -> None:
        for record, stage, error in letters:
            log.warning("dead-lettering %s[%d]@%d at %s: %s",
                        record.topic, record.partition, record.offset, stage, error)
            self.metrics.inc("cdc_dead_letters_total", stage=stage)
        backoff = Backoff(0.1, 5.0)
        while True:  # Kafka down: wait, never drop a dead letter
            try:
                await self.dead_letters.send(letters)
                return
            except RetriableError as exc:
                delay = backoff.next_delay()
                log.warning("dead-letter topic unavailable, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)


def _take_partitions(items: list[Item], only: set[tuple[str, int]]
                     ) -> tuple[list[Item], list[Item]]:
    """``items`` of the partitions ``only`` (taken) and the rest (left), in order. A
    truncate and everything accepted after it, in any partition, are left: a truncate is
    drained alone (``partition_groups``), after what came before it and before what came
    after it, never beside another partition's drain (nor behind a drain that retries and
    takes its partition's records again)."""
    end = next((i for i, (_, event) in enumerate(items) if event.op == "t"), len(items))
    taken: list[Item] = []
    left: list[Item] = []
    for item in items[:end]:
        (taken if _partition_of(item[0]) in only else left).append(item)
    return taken, left + items[end:]


def partition_groups(batch: Sequence[Item]) -> list[list[int]]:
    """The batch's indexes by raw partition, in batch order within each. One group when the
    batch holds a truncate: it must stay ordered against every partition's changes."""
    if any(event.op == "t" for _, event in batch):
        return [list(range(len(batch)))]
    groups: dict[tuple[str, int], list[int]] = {}
    for i, (record, _) in enumerate(batch):
        groups.setdefault(_partition_of(record), []).append(i)
    return list(groups.values())


async def write_per_partition(
    sink: Sink, events: Sequence[ChangeEvent], groups: list[list[int]]
) -> list[Rejection]:
    """One write in flight per partition: each group is written by its own ``sink.write``,
    all at once, so a sink that waits on the network (Elasticsearch's ``_bulk``) has a
    request per partition in flight rather than one for the whole batch. A row lives in one
    partition, so its changes are never in two writes at once. Every write finishes before
    the first failure is raised (no write is left running behind a retry)."""
    if len(groups) == 1:
        return await sink.write(events)
    outcomes = await asyncio.gather(
        *(sink.write([events[i] for i in group]) for group in groups), return_exceptions=True)
    rejected: list[Rejection] = []
    for group, outcome in zip(groups, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            raise outcome
        rejected += [Rejection(group[r.index], r.error) for r in outcome]
    return rejected


def foreign_table(
    topic_tables: Mapping[str, str], topic: str, event: ChangeEvent
) -> ForeignTableError | None:
    """Why ``event``, read from ``topic``, may not be applied: its source names another table
    than the topic carries. Sinks derive every index, key and truncate from the event's
    table, so this is what keeps a record from creating, writing or deleting another
    table's data. None when it agrees."""
    expected = topic_tables.get(topic)
    if event.table_id == expected:
        return None
    shown = event.table_id if len(event.table_id) <= 200 else event.table_id[:197] + "..."
    return ForeignTableError(
        f"'source.schema'/'source.table' name {shown!r}, but topic {topic} carries "
        f"{expected or 'no configured table'}: a record cannot write to another table")


class StaleLog:
    """Says in the log that changes were dropped as stale (behind what a row already holds):
    the first at once, then at most one line per ``every_s`` with the count since."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self._since = 0
        self._last = float("-inf")

    def note(self, event: ChangeEvent) -> None:
        self._since += 1
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        log.warning(
            "dropped %d change(s) as stale (older than what the row already holds), latest: "
            "%s key %s at position %s; counted in cdc_dedup_stale_total",
            self._since, event.table_id, event.key, event.position,
        )
        self._since = 0
        self._last = now
