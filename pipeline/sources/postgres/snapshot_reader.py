"""One reader process of a parallel initial snapshot (``postgres.snapshot_readers`` > 1).

Each reader opens its own connection, imports the slot's exported snapshot (so every reader
sees the database at the slot's consistent point), and takes key ranges from a shared queue:
it reads a range, converts and encodes its rows exactly as the one-process snapshot does,
and publishes them with a Kafka producer of its own (the capture's producer settings, so a
key lands on the partition its streamed changes will). It reports each range ``read`` once
its rows are queued (the capture then hands out the next), and ``done`` only once Kafka
acknowledged every row of it: the capture confirms snapshot progress from those reports
alone.

Acknowledgements are learnt in bulk: the reader's producer reports refused records only
(``delivery.report.only.error``; a delivery report per record cost about a fifth of a
reader's CPU), and about once a second, or whenever it has nothing left to read, the reader
waits until Kafka acknowledged everything it queued (a flush). When that returns with no
refusal reported, every range queued before it is done.

A reader stops on a ``None`` task, when its parent process is gone (a kill -9 of the capture
must not leave readers behind), or on an error, which it reports with its kind so the parent
raises the same error the one-process snapshot would.

A reader whose producer holds records Kafka has acknowledged none of for
``kafka.producer_stall_s`` gives up with a retriable error (:mod:`pipeline.capture.stall`):
the capture then restarts the snapshot from its last confirmed chunk with new readers and
new producers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg2
from confluent_kafka import KafkaException

from pipeline.capture.publisher import capture_publisher
from pipeline.capture.source import ANY_PARTITION
from pipeline.capture.stall import StallWatch
from pipeline.config import KafkaSettings, PostgresSettings
from pipeline.errors import CdcError, PermanentError, RetriableError
from pipeline.events import snapshot_marker
from pipeline.sources.postgres.chunks import ChunkKey, TableReader
from pipeline.sources.postgres.reads import ReadEncoder
from pipeline.sources.postgres.slot import connect, translate
from pipeline.sources.postgres.snapshot import open_snapshot_transaction
from pipeline.sources.postgres.types import TypeResolver
from pipeline.sources.postgres.unconverted import UnconvertedValues

log = logging.getLogger(__name__)

#: How often an idle reader checks that its parent still runs.
_IDLE_S = 0.2
#: Longest a busy reader keeps queued ranges unconfirmed before it waits for Kafka's
#: acknowledgements (a stall of one produce round trip, about 10 ms, once a second). A crash
#: reads at most this much again.
_CONFIRM_S = 1.0


@dataclass(frozen=True, slots=True)
class KeyRange:
    """One chunk to read: keys above ``after`` up to ``upto`` (inclusive; None: to the end)
    of ``table``, with the snapshot markers its first and last rows carry."""

    seq: int
    table: str
    after: ChunkKey | None
    upto: ChunkKey | None
    first_in_table: bool
    last_in_table: bool
    first_overall: bool
    last_overall: bool


@dataclass(frozen=True, slots=True)
class ReaderSetup:
    """What a reader process needs (picklable: readers are spawned, not forked)."""

    pg: PostgresSettings
    kafka: KafkaSettings
    session: str
    exported: str | None
    consistent: int  # the LSN every read carries
    ts_us: int
    index: int
    parent_pid: int
    log_level: str
    #: Where the Avro schemas are, for ``kafka.value_format: avro`` (values as capture's).
    schemas_dir: Path | None = None


def run_reader(setup: ReaderSetup, tasks: Any, results: Any) -> None:
    """A reader process's main: ranges from ``tasks`` until ``None``; reports to ``results``
    ``("read", seq)``, ``("done", seq, rows, unconverted counts)`` or ``("error", kind,
    message)``."""
    logging.basicConfig(level=setup.log_level,
                        format=f"%(asctime)s %(levelname)s snapshot-reader-{setup.index} "
                               "%(name)s: %(message)s")
    try:
        _Reader(setup, results).run(tasks)
    except CdcError as exc:
        kind = "retriable" if isinstance(exc, RetriableError) else "setup"
        results.put(("error", kind, str(exc)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which stops capture
        results.put(("error", "crash", f"{type(exc).__name__}: {exc}\n"
                                       f"{traceback.format_exc(limit=8)}"))


class _ParentGone(Exception):
    """The capture process is gone: nobody would confirm what a reader publishes."""


class _Reader:
    def __init__(self, setup: ReaderSetup, results: Any) -> None:
        self.setup = setup
        self.unconverted = UnconvertedValues()
        self.types = TypeResolver()
        self.readers: dict[str, TableReader] = {}
        self.publisher = capture_publisher(setup.kafka, setup.schemas_dir,
                                           client_id=f"cdc-snapshot-{setup.index}",
                                           refusals_only=True)
        self.ranges = _QueuedRanges(self.publisher, results, self.unconverted, self._check_parent,
                                    setup.kafka.producer_stall_s)
        self.publisher.while_waiting = self.ranges.waiting  # a full queue waits the same way
        self.conn = connect(setup.pg.dsn.get_secret_value(), text_as_stored=True,
                            options=setup.session)
        self.encoder = ReadEncoder(setup.kafka.topic_prefix,
                                   open_snapshot_transaction(self.conn, setup.exported))

    def run(self, tasks: Any) -> None:
        try:
            while True:
                try:
                    task = tasks.get_nowait()
                except queue.Empty:
                    self.ranges.confirm()  # nothing to read now: report what Kafka has
                    try:
                        task = tasks.get(timeout=_IDLE_S)
                    except queue.Empty:
                        self._check_parent()
                        continue
                if task is None:
                    break
                self._read(task)
                self.ranges.serve()
                self._check_parent()
            self.ranges.confirm()
        except _ParentGone:
            return
        finally:
            with contextlib.suppress(psycopg2.Error):
                self.conn.close()

    def _check_parent(self) -> None:
        if os.getppid() != self.setup.parent_pid:
            raise _ParentGone

    def _read(self, task: KeyRange) -> None:
        reader = self.readers.get(task.table)
        try:
            if reader is None:
                reader = self.readers[task.table] = TableReader(
                    self.conn, task.table, self.setup.pg, self.types, self.unconverted)
            rows = reader.chunk(task.after, self.setup.pg.snapshot_chunk_size, task.upto)
        except psycopg2.Error as exc:
            raise translate(exc, f"reading {task.table} for the snapshot") from exc
        shape, setup = reader.shape, self.setup
        topic = setup.kafka.raw_topic(task.table)
        now_ms = int(time.time() * 1000)
        last = len(rows) - 1

        def marked(i: int) -> tuple[str, bytes, bytes, int]:
            """The chunk's first or last row, whose marker may not be ``true``."""
            marker = snapshot_marker(task.first_overall and i == 0,
                                     task.last_overall and i == last,
                                     task.first_in_table and i == 0,
                                     task.last_in_table and i == last)
            after = shape.row(rows[i])
            value = self.encoder.value(shape, orjson.dumps(after), marker, setup.consistent,
                                       setup.ts_us, now_ms)
            return topic, shape.key_json(after), value, ANY_PARTITION

        records = [marked(0)] if rows else []
        if last > 0:
            head, tail = self.encoder.halves(shape, "true", setup.consistent, setup.ts_us,
                                             now_ms)
            records += shape.reads(rows, 1, last, topic, head, tail)
            records.append(marked(last))
        produce, publish = self.publisher.produce, self.publisher.publish
        refused = self.ranges.refused
        for topic, key, value, partition in records:
            try:
                produce(topic, value, key, partition, refused)
            except (BufferError, KafkaException):  # publish() waits or says why
                publish(topic, key, value, refused, partition)
                self.ranges.wait_over()
        self.ranges.queued(task.seq, len(rows))


class _QueuedRanges:
    """The ranges a reader queued to Kafka and has not reported done yet.

    The producer calls :meth:`refused` for refused records only, so nothing marks a record
    acknowledged: :meth:`confirm` waits until the producer holds no record (flush) and, with
    no refusal reported, reports every range queued before done. :meth:`serve` does that
    once ranges waited ``_CONFIRM_S``; the first refusal fails the reader instead. Waiting
    for Kafka (in a flush, or for room in a full queue) checks that the capture still runs
    and that Kafka acknowledged some record within ``stall_s``.
    """

    __slots__ = ("publisher", "results", "unconverted", "check_parent", "pending", "due",
                 "failed", "stall")

    def __init__(self, publisher: Any, results: Any, unconverted: UnconvertedValues,
                 check_parent: Callable[[], None], stall_s: float) -> None:
        self.publisher = publisher
        self.results = results
        self.unconverted = unconverted
        self.check_parent = check_parent
        self.pending: list[tuple[int, int]] = []  # (seq, rows) queued, not yet reported done
        self.due = 0.0  # when the oldest pending range must be confirmed
        self.failed: str | None = None
        self.stall = StallWatch(stall_s, "this snapshot reader queued")

    def refused(self, err: Any, _msg: Any) -> None:
        """The producer's delivery callback (it runs for refused records only)."""
        if err is not None and self.failed is None:
            self.failed = f"Kafka refused a snapshot record: {err}"

    def queued(self, seq: int, rows: int) -> None:
        """Every row of range ``seq`` is queued: the capture may hand out the next range."""
        if not self.pending:
            self.due = time.monotonic() + _CONFIRM_S
        self.pending.append((seq, rows))
        self.results.put(("read", seq))

    def serve(self) -> None:
        """Run pending callbacks; confirm when the oldest pending range has waited enough."""
        self.publisher.poll(0)
        self._raise_refusal()
        if self.pending and time.monotonic() >= self.due:
            self.confirm()

    def confirm(self) -> None:
        """Wait until Kafka acknowledged every queued record, then report the pending ranges
        done (the counts of unconverted values with the first)."""
        while remaining := self.publisher.flush(_IDLE_S):
            self._waited(remaining)
        self.wait_over()
        self.publisher.poll(0)
        self._raise_refusal()
        if not self.pending:
            return
        counts = self.unconverted.drain()
        for seq, rows in self.pending:
            self.results.put(("done", seq, rows, counts))
            counts = {}
        self.pending.clear()

    def waiting(self) -> None:
        """The publisher waits for room in its full queue (about every 50 ms)."""
        self._waited(len(self.publisher))

    def wait_over(self) -> None:
        """The wait is over (the queue took the record): a later one starts a new clock."""
        self.stall.reset()

    def _waited(self, remaining: int) -> None:
        """One round of waiting for Kafka, the producer still holding ``remaining`` records:
        a refusal, a capture gone, or no acknowledgement for ``stall_s`` ends the reader."""
        self._raise_refusal()
        self.check_parent()  # Kafka may be down: a reader whose capture died must end
        self.stall.observe(remaining)

    def _raise_refusal(self) -> None:
        if self.failed is not None:
            raise PermanentError(self.failed)
