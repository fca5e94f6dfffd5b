"""The initial snapshot read by several processes (``postgres.snapshot_readers`` > 1).

The one-process snapshot (:mod:`.snapshot`) is CPU-bound in Python: converting and encoding
each row takes one core. Here the capture process only plans: it splits each table into key
ranges of ``snapshot_chunk_size`` rows, finding each range's end from the primary key alone
(an index-only scan), and hands the ranges to reader processes (:mod:`.snapshot_reader`) that
each import the slot's exported snapshot, read, convert and publish with a producer of their
own. Chunks of one table and several tables are read side by side, as Debezium's
``snapshot.max.threads`` does for tables.

A range is read when a reader queued its rows to Kafka (the planner keeps ``_AHEAD`` ranges
per reader queued or being read), and done when Kafka acknowledged every row of it. Progress
per table is the end of the longest run of done ranges from its start, confirmed through the
capture loop like any position and kept in the same record as the one-process snapshot's
(either can resume the other's). After a crash, ranges that were done beyond that run are
read again: duplicates of ``op: r`` events, which the sinks absorb, never a gap. A resumed
snapshot has no exported snapshot (it dies with the capture), so each reader takes its own;
that is exact for the same reason as in :mod:`.snapshot`: streaming has not started and the
slot still holds every change since the consistent point.

Markers: ``first`` on the first row of the first table's first range, ``last`` on the last
row of the last table's last range (when that range is empty, no read carries ``last``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg2

from pipeline.capture.source import Checkpoint, Item
from pipeline.config import KafkaSettings, PostgresSettings
from pipeline.errors import PermanentError, RetriableError, SourceSetupError
from pipeline.positions import Lsn, SnapshotPosition
from pipeline.sources.postgres.chunks import ChunkKey, TableReader
from pipeline.sources.postgres.slot import connect, translate
from pipeline.sources.postgres.snapshot import open_snapshot_transaction
from pipeline.sources.postgres.snapshot_reader import KeyRange, ReaderSetup, run_reader
from pipeline.sources.postgres.types import TypeResolver
from pipeline.sources.postgres.unconverted import UnconvertedValues

log = logging.getLogger(__name__)

#: Ranges queued per reader ahead of what it reads (a reader never waits for the planner).
_AHEAD = 2
#: How long one ``read`` waits for a reader's report before handing control back.
_WAIT_S = 0.05
#: Seconds between progress lines in the log.
_LOG_EVERY_S = 10.0
#: How long closing waits for readers to exit before killing them.
_JOIN_S = 5.0


@dataclass(slots=True)
class _TablePlan:
    """One table's ranges: planned up to ``after``; ``done`` the ranges acknowledged."""

    name: str
    after: ChunkKey | None  # where the next range starts
    confirmed: ChunkKey | None  # the end of the longest run of done ranges from the start
    planned_all: bool = False
    ranges: list[KeyRange] = field(default_factory=list)  # not yet confirmed, in key order
    done: set[int] = field(default_factory=set)


class ParallelSnapshot:
    """The listed tables read by ``pg.snapshot_readers`` processes; the same interface as
    :class:`~pipeline.sources.postgres.snapshot.TableSnapshot`."""

    def __init__(self, pg: PostgresSettings, kafka: KafkaSettings, session: str,
                 consistent: Lsn, exported: str | None, progress: dict[str, Any] | None,
                 unconverted: UnconvertedValues, schemas_dir: Path | None = None) -> None:
        self.pg = pg
        self.consistent = consistent
        self.unconverted = unconverted
        progress = progress or {}
        self.done: list[str] = list(progress.get("done", []))
        partial: dict[str, ChunkKey] = dict(progress.get("partial") or {})
        if progress.get("table"):  # saved by the one-process snapshot
            partial[progress["table"]] = progress["after"]
        self.chunks = int(progress.get("chunks", 0))
        self.rows = int(progress.get("rows", 0))
        self.ts_us = int(progress.get("ts_us") or time.time() * 1_000_000)
        remaining = [t for t in pg.tables if t not in self.done]
        self.plans = [_TablePlan(t, partial.get(t), partial.get(t)) for t in remaining]
        self._first = not self.done and not partial
        self._seq = 0
        self._in_flight: dict[int, _TablePlan] = {}  # handed out, not read yet
        self._unconfirmed: dict[int, _TablePlan] = {}  # read, not acknowledged yet
        self._complete = False
        self._finished = False
        self._next_log = time.monotonic() + _LOG_EVERY_S
        self._types = TypeResolver()
        self._readers: dict[str, TableReader] = {}
        self.conn = connect(pg.dsn.get_secret_value(), text_as_stored=True, options=session)
        open_snapshot_transaction(self.conn, exported)
        context = multiprocessing.get_context("spawn")  # a forked producer is not safe
        self.tasks: Any = context.Queue()
        self.results: Any = context.Queue()
        setup = ReaderSetup(pg, kafka, session, exported, int(consistent), self.ts_us, 0,
                            os.getpid(), logging.getLevelName(logging.getLogger().level),
                            schemas_dir)
        self.processes = [
            context.Process(target=run_reader, name=f"cdc-snapshot-reader-{i}", daemon=True,
                            args=(replace(setup, index=i), self.tasks, self.results))
            for i in range(pg.snapshot_readers)
        ]
        for process in self.processes:
            process.start()
        where = "inside the exported snapshot" if exported else "resuming after a restart"
        log.info("snapshot of %s at %s (%s; %d tables done) with %d reader processes",
                 ", ".join(pg.tables), consistent, where, len(self.done), len(self.processes))

    @property
    def finished(self) -> bool:
        return self._finished

    def read(self) -> list[Item]:
        """A checkpoint when the confirmed progress moved (else nothing, after a short wait
        for the readers), and the final one when every range is done."""
        if self._complete:
            self._finished = True
            return []
        self._plan()
        moved = self._collect()
        self._check_readers()
        if not self.plans:
            self._complete = True
            self._stop_readers()
            log.info("snapshot complete: %d rows", self.rows)
            return [Checkpoint(SnapshotPosition(self.chunks + 1, self._progress(True)))]
        if not moved:
            return []
        self.chunks += 1
        if time.monotonic() >= self._next_log:
            self._next_log = time.monotonic() + _LOG_EVERY_S
            log.info("snapshot: %d rows read, %d tables to go", self.rows, len(self.plans))
        return [Checkpoint(SnapshotPosition(self.chunks, self._progress(False)))]

    def close(self) -> None:
        self._stop_readers()
        with contextlib.suppress(psycopg2.Error):
            self.conn.close()

    # -- planning ---------------------------------------------------------------------
    def _plan(self) -> None:
        """Queue ranges until every reader has ``_AHEAD`` waiting."""
        want = _AHEAD * len(self.processes)
        for plan in self.plans:
            while len(self._in_flight) < want and not plan.planned_all:
                self._plan_range(plan)
            if len(self._in_flight) >= want:
                return

    def _plan_range(self, plan: _TablePlan) -> None:
        reader = self._readers.get(plan.name)
        try:
            if reader is None:
                reader = self._readers[plan.name] = TableReader(
                    self.conn, plan.name, self.pg, self._types, self.unconverted)
            upto, final = reader.boundary(plan.after, self.pg.snapshot_chunk_size)
        except psycopg2.Error as exc:
            raise translate(exc, f"planning the snapshot of {plan.name}") from exc
        self._seq += 1
        last_table = plan is self.plans[-1]
        task = KeyRange(self._seq, plan.name, plan.after, upto,
                        first_in_table=plan.after is None, last_in_table=final,
                        first_overall=self._first, last_overall=final and last_table)
        self._first = False
        plan.ranges.append(task)
        plan.after, plan.planned_all = upto, final
        self._in_flight[task.seq] = plan
        self.tasks.put(task)

    # -- progress ---------------------------------------------------------------------
    def _collect(self) -> bool:
        """Take the readers' reports; True when some table's confirmed run grew."""
        moved = False
        timeout: float | None = _WAIT_S
        while True:
            try:
                report = self.results.get(timeout=timeout) if timeout else \
                    self.results.get_nowait()
            except queue.Empty:
                return moved
            timeout = None
            if report[0] == "error":
                _, kind, message = report
                self._stop_readers()
                if kind == "retriable":
                    raise RetriableError(message)
                if kind == "setup":
                    raise SourceSetupError(message)
                raise PermanentError(f"a snapshot reader failed: {message}")
            if report[0] == "read":
                self._unconfirmed[report[1]] = self._in_flight.pop(report[1])
                continue
            _, seq, rows, counts = report
            self.rows += rows
            self.unconverted.merge(counts)
            plan = self._unconfirmed.pop(seq)
            plan.done.add(seq)
            moved |= self._advance(plan)

    def _advance(self, plan: _TablePlan) -> bool:
        moved = False
        while plan.ranges and plan.ranges[0].seq in plan.done:
            finished = plan.ranges.pop(0)
            plan.done.discard(finished.seq)
            plan.confirmed = finished.upto
            moved = True
        if plan.planned_all and not plan.ranges:
            self.plans.remove(plan)
            self.done.append(plan.name)
            self._readers.pop(plan.name, None)
        return moved

    def _progress(self, complete: bool) -> dict[str, Any]:
        partial = {p.name: p.confirmed for p in self.plans if p.confirmed is not None}
        return {"lsn": str(self.consistent), "complete": complete, "done": list(self.done),
                "partial": partial, "chunks": self.chunks, "rows": self.rows,
                "ts_us": self.ts_us}

    # -- readers ----------------------------------------------------------------------
    def _check_readers(self) -> None:
        for process in self.processes:
            if process.exitcode is not None and not self._complete:
                # A reader exits early only on an error it reported or when killed: take its
                # report if there is one; what no reader reported is read again after the
                # reconnect.
                self._collect()
                self._stop_readers()
                raise RetriableError(f"snapshot reader {process.name} exited with code "
                                     f"{process.exitcode}; resuming from the last "
                                     "confirmed chunk")

    def _stop_readers(self) -> None:
        """Ask readers to finish (they flush to Kafka first), kill those that do not."""
        alive = [p for p in self.processes if p.is_alive()]
        if not alive:
            return
        if self._complete:
            for _ in alive:
                self.tasks.put(None)
            deadline = time.monotonic() + _JOIN_S
            for process in alive:
                process.join(max(0.0, deadline - time.monotonic()))
        for process in alive:
            if process.is_alive():
                process.kill()
                process.join(_JOIN_S)
