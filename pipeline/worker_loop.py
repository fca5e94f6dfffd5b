"""The worker skeleton both engines share: records -> ``BatchProcessor`` -> ack ledger -> commit.

    engine's consumer ─▶ accept ─▶ BatchProcessor ─▶ drain (retried) ─▶ changelog flush
                            │                                                │
                            └──── ack ledger (token per record) ◀── finished ┘
                                        │ contiguous prefix per partition
                                        ▼
                                 engine's commit(tokens)

An engine only adapts its consumer: it hands over each record with the token that
acknowledges it (a Faust message, or ``(topic, partition, offset)`` for confluent-kafka) and
gives a ``commit`` that takes the tokens whose every predecessor is finished, in offset order
per partition. Everything between lives here, once: writing through the processor, retrying a
failed write with the one backoff until the sink confirmed (never committing past unwritten
work; the engine's partitions paused meanwhile, ``pipeline.backpressure``), flushing the
dedup changelog before anything is acknowledged, and the ledger.

An engine may keep one drain in flight per partition (:meth:`WorkerLoop.start_drain`,
collected by :meth:`WorkerLoop.wait_any` or :meth:`WorkerLoop.finish`) and meanwhile read
and decode the next records: Elasticsearch indexes one partition's batch while the worker
prepares another's, instead of each waiting for the other. Nothing changes for what is
committed: a drain commits only what it wrote, and a partition's next drain starts only
after its previous one finished (by itself, when records wait for it: the engine need not
be there to start it).

A :class:`~pipeline.errors.PermanentError` (refused credentials, an outage past
``errors.retry_timeout_s``) is raised to the engine, which stops the worker.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, Protocol, TypeVar

from pipeline.acks import AckLedger
from pipeline.backpressure import Backpressure
from pipeline.deadletter import RawRecord
from pipeline.errors import PermanentError
from pipeline.metrics import Metrics
from pipeline.processing import BatchProcessor, Decoded
from pipeline.retry import Backoff
from pipeline.sinks.base import drains_per_partition

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Fewer records than this are decoded inline: a thread's hand-over costs more than it saves.
DECODE_ASIDE_MIN = 64
#: Dedup rows an eviction pass examines between two turns of the event loop (~10 ms each).
EVICT_SLICE_ROWS = 500
#: The key of a drain of every partition at once (a truncate, or nothing to write).
ALL_PARTITIONS = ("", -1)
#: Drains of one partition whose write ended and whose changelog flush is not acknowledged
#: yet: the next write of the partition waits while this many are.
FLUSHES_PER_PARTITION = 2


class Changelog(Protocol):
    """Where the dedup entries the sinks confirmed are written before any ack."""

    async def flush(self) -> None: ...


class WorkerLoop(Generic[T]):
    def __init__(self, processor: BatchProcessor, changelog: Changelog, metrics: Metrics,
                 commit: Callable[[list[T]], Awaitable[None]], *,
                 retry_initial_s: float, retry_max_s: float, sink: str = "",
                 backpressure: Backpressure | None = None,
                 per_partition: bool | None = None) -> None:
        self.processor = processor
        #: one drain in flight per partition, or (False) one drain of everything at a time;
        #: by default what the sinks declare (``drains_per_partition``): per partition for a
        #: sink that waits on the network (search), whole batches for a quick one (cache)
        self.per_partition = (drains_per_partition(processor.sinks) if per_partition is None
                              else per_partition)
        #: how a retry waits: with the partitions paused, still polling (the engine's consumer)
        self.backpressure = backpressure or Backpressure(metrics, sink)
        self.changelog = changelog
        self.metrics = metrics
        self.commit = commit
        self.sink = sink
        self.ledger: AckLedger[T] = AckLedger()
        # Reset after each success, not by time: a write that fails again right after one
        # that worked is a new outage.
        self._backoff = Backoff(retry_initial_s, max(retry_initial_s, retry_max_s),
                                healthy_s=math.inf)
        #: drains writing, by partition (``ALL_PARTITIONS``: one drain of everything)
        self._in_flight: dict[tuple[str, int], asyncio.Future[None]] = {}
        #: drains whose write ended, awaiting the changelog's acknowledgement: their key
        self._flushing: dict[asyncio.Future[None], tuple[str, int]] = {}

    def accept(self, records: Sequence[tuple[RawRecord, T]],
               decoded: Sequence[Decoded] | None = None) -> None:
        """Track each record with its token (in consumption order), then hand them to the
        processor (pure: decode, evolve, reorder). ``decoded``: see :meth:`decode`."""
        track = self.ledger.track
        for record, token in records:
            track((record.topic, record.partition), record.offset, token)
        # Set here too, not only after a drain: a drain retrying against a sink that is down
        # never ends, and the held records are what CdcWorkerStuck alerts on.
        self.metrics.set("cdc_worker_unacked_records", self.ledger.waiting())
        self.processor.accept([record for record, _ in records], decoded=decoded)

    async def decode(self, records: Sequence[tuple[RawRecord, T]]) -> list[Decoded] | None:
        """The records decoded in a thread while a drain is in flight (None otherwise, or
        for a few records: :meth:`accept` decodes them). Decoding is most of a record's
        CPU; in a thread it runs while the event loop sends the sink's request and waits
        for it, instead of after."""
        if not self.draining or len(records) < DECODE_ASIDE_MIN:
            return None
        return await asyncio.to_thread(self.processor.decode, [r for r, _ in records])

    def start_drain(self) -> None:
        """Begin draining without waiting: one drain writing per partition (as sink
        connectors keep one request in flight per partition), so the worker prepares one
        partition's batch while the sink writes another's, and reads the next records
        meanwhile. A drain whose write ended waits for the changelog's acknowledgement
        while the next drain of its partition writes (at most ``FLUSHES_PER_PARTITION``
        unacknowledged at once; the ledger commits them in order). A truncate is drained
        alone, after every drain in flight. Collect the drains with :meth:`wait_any` or
        :meth:`finish`. Without ``per_partition``: one drain of everything ready (whole
        batches, as taken), and the records accepted meanwhile wait for the next one."""
        writing = self._in_flight
        if ALL_PARTITIONS in writing:
            return
        if not self.per_partition:
            if not writing and self.processor.has_work and self._may_start(ALL_PARTITIONS):
                self._launch(ALL_PARTITIONS, None)
            return
        if self.processor.truncate_ready():
            if not writing and not self._flushing:
                self._launch(ALL_PARTITIONS, None)
            return
        for tp in self.processor.ready_partitions() - writing.keys():
            if self._may_start(tp):
                self._launch(tp, {tp})
        # only dead letters, or finished records (tombstones) whose acks wait for a drain
        if not writing and not self._flushing and self.processor.has_work:
            self._launch(ALL_PARTITIONS, set())

    def _may_start(self, key: tuple[str, int]) -> bool:
        """Fewer than ``FLUSHES_PER_PARTITION`` drains of ``key`` await the changelog."""
        return sum(1 for k in self._flushing.values() if k == key) < FLUSHES_PER_PARTITION

    def _launch(self, key: tuple[str, int], only: set[tuple[str, int]] | None) -> None:
        def written() -> None:
            # the write ended: the partition's next drain may write while this one's
            # changelog flush is acknowledged
            if self._in_flight.get(key) is task:
                del self._in_flight[key]
                self._flushing[task] = key
            if self.processor.has_work:
                self.start_drain()

        task = asyncio.ensure_future(self.drain(only, written))
        self._in_flight[key] = task
        task.add_done_callback(functools.partial(self._drain_ended, key))

    def _drain_ended(self, key: tuple[str, int], task: asyncio.Future[None]) -> None:
        """A drain that ended well leaves the books and starts what waits behind it (the
        records its partition accepted meanwhile, a truncate waiting for every drain), so
        nothing waits for the engine's next batch; one that failed stays for
        :meth:`collect` to raise."""
        if task.cancelled() or task.exception() is not None:
            return
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        self._flushing.pop(task, None)
        if self.processor.has_work:
            self.start_drain()

    def _drains(self) -> list[asyncio.Future[None]]:
        return [*self._in_flight.values(), *self._flushing]

    @property
    def draining(self) -> bool:
        """A drain started by :meth:`start_drain` is not collected yet."""
        return bool(self._in_flight or self._flushing)

    async def wait_any(self) -> None:
        """Wait until a drain in flight finished; collect every finished one (raises what
        one raised)."""
        if self.draining:
            await asyncio.wait(self._drains(), return_when=asyncio.FIRST_COMPLETED)
        self.collect()

    async def finish(self) -> None:
        """Wait until no drain is in flight, those started behind them included (raises
        what one raised, after all ended)."""
        while self.draining:
            await asyncio.wait(self._drains())
            self.collect()

    def collect(self) -> None:
        """Take the drains that finished off the books (raises what one raised)."""
        done = [key for key, task in self._in_flight.items() if task.done()]
        failures = [self._in_flight.pop(key).exception() for key in done]
        flushed = [task for task in self._flushing if task.done()]
        failures += [task.exception() for task in flushed]
        for task in flushed:
            del self._flushing[task]
        for failure in failures:
            if failure is not None:
                raise failure

    async def drain(self, only: set[tuple[str, int]] | None = None,
                    written: Callable[[], None] | None = None) -> None:
        """Write what is ready (of the partitions ``only``, when given; retrying until
        done), call ``written``, wait until the changelog holds the dedup entries, then
        commit every finished prefix."""
        finished = await self._write_until_done(only)
        if written is not None:
            written()
        await self._retry(self.changelog.flush)
        done = self.ledger.done
        for record in finished:
            done((record.topic, record.partition), record.offset)
        await self.commit(self.ledger.ready())
        self.metrics.set("cdc_worker_unacked_records", self.ledger.waiting())

    async def _write_until_done(self, only: set[tuple[str, int]] | None) -> list[RawRecord]:
        # What the sinks confirmed stays finished when a later write fails: the retry
        # drains only what is left (dropped, they would never be acknowledged, and their
        # partitions never committed again).
        finished: list[RawRecord] = []

        async def write() -> None:
            finished.extend(await self.processor.drain(only))

        await self._retry(write)
        return finished

    async def _retry(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` until it succeeds, waiting with the backoff (partitions paused)
        between failures; a PermanentError goes to the engine."""
        failed = False
        while True:
            try:
                await step()
            except PermanentError:
                raise  # restarting could not help: the engine stops the worker
            except Exception as exc:  # noqa: BLE001 - retry; never commit past unwritten work
                self.metrics.inc("cdc_worker_errors_total", kind=type(exc).__name__)
                delay = self._backoff.next_delay()
                failed = True
                log.exception("writing to sink %s failed, retrying in %.1fs: %s",
                              self.sink, delay, exc)
                await self.backpressure.wait(delay)
                continue
            if failed:
                self._backoff.reset()
            await self.backpressure.release()
            return

    def flush_idle(self, now_ms: int | None = None) -> bool:
        """Release quiet partitions' buffered events; True when something waits to be
        drained."""
        self.processor.flush_idle(int(time.time() * 1000) if now_ms is None else now_ms)
        return self.processor.pending > 0

    async def evict(self, now_ms: int | None = None) -> int:
        """Drop dedup entries older than the window (and say so in the changelog: the
        deletes go out with the next drain's flush; nothing waits for them, as no
        acknowledgement depends on them). A pass over a store of millions of rows examines
        tens of thousands: it goes in slices of ``EVICT_SLICE_ROWS``, the event loop free
        between them, so drains in flight and the consumer are not held up for the whole
        pass."""
        dedup = self.processor.dedup
        if dedup is None:
            return 0
        evicted = 0
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        for dropped in dedup.evict_in_slices(now_ms, EVICT_SLICE_ROWS):
            evicted += dropped
            if dropped:
                self.metrics.inc("cdc_dedup_evicted_total", dropped)
            await asyncio.sleep(0)
        return evicted

    def take_ready(self) -> list[T]:
        """Tokens that may be committed now (a revocation commits them before letting go)."""
        return self.ledger.ready()

    def forget(self) -> None:
        """Partitions went away: their unfinished records are read again by the next owner."""
        self.ledger = AckLedger()

    def waiting(self) -> int:
        return self.ledger.waiting()
